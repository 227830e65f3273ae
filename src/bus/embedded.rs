//! The embedded in-process bus: the same semantics as Redis for what the hub uses (pattern
//! subscriptions, publish, the key operations with TTLs), in one process, nothing persisted.

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

    fn apply(&mut self, op: Op, now: Instant, metrics: &Metrics) -> Result<Reply, StoreError> {
        Ok(match op {
            Op::Get { key } => match self.live(&key, now) {
                Some(Entry {
                    value: Value::Text(text),
                    ..
                }) => Reply::Text(text.clone()),
                Some(_) => return Err(wrong_type(&key)),
                None => Reply::Nil,
            },
            Op::Set {
                key,
                value,
                ttl,
                only_if_absent,
            } => {
                if only_if_absent && self.live(&key, now).is_some() {
                    return Ok(Reply::Nil);
                }
                self.keys.insert(
                    key,
                    Entry {
                        value: Value::Text(value),
                        expires_at: ttl.map(|ttl| now + ttl),
                    },
                );
                Reply::Ok
            }
            Op::Del { key } => Reply::Int(i64::from(
                self.live(&key, now).is_some() && self.keys.remove(&key).is_some(),
            )),
            Op::Exists { key } => Reply::Int(i64::from(self.live(&key, now).is_some())),
            Op::Expire { key, ttl } => match self.live(&key, now) {
                Some(entry) => {
                    entry.expires_at = Some(now + ttl);
                    Reply::Int(1)
                }
                None => Reply::Int(0),
            },
            Op::TtlMillis { key } => match self.live(&key, now) {
                Some(Entry {
                    expires_at: Some(at),
                    ..
                }) => Reply::Int(i64::try_from(at.duration_since(now).as_millis()).unwrap_or(0)),
                Some(_) => Reply::Int(-1),
                None => Reply::Int(-2),
            },
            Op::HSet { key, fields } => {
                let Value::Hash(map) = self.value_or_insert(
                    &key,
                    now,
                    || Value::Hash(BTreeMap::new()),
                    |v| matches!(v, Value::Hash(_)),
                )?
                else {
                    return Err(wrong_type(&key));
                };
                let added = fields
                    .into_iter()
                    .filter(|(field, value)| map.insert(field.clone(), value.clone()).is_none())
                    .count();
                Reply::Int(i64::try_from(added).unwrap_or(0))
            }
            Op::HGetAll { key } => match self.live(&key, now) {
                Some(Entry {
                    value: Value::Hash(map),
                    ..
                }) => Reply::Pairs(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
                Some(_) => return Err(wrong_type(&key)),
                None => Reply::Pairs(Vec::new()),
            },
            Op::ZAdd { key, score, member } => {
                let Value::ZSet(set) = self.value_or_insert(
                    &key,
                    now,
                    || Value::ZSet(HashMap::new()),
                    |v| matches!(v, Value::ZSet(_)),
                )?
                else {
                    return Err(wrong_type(&key));
                };
                Reply::Int(i64::from(set.insert(member, score).is_none()))
            }
            Op::ZRem { key, member } => {
                let removed = match self.live(&key, now) {
                    Some(Entry {
                        value: Value::ZSet(set),
                        ..
                    }) => set.remove(&member).is_some(),
                    Some(_) => return Err(wrong_type(&key)),
                    None => false,
                };
                self.remove_if_empty(&key);
                Reply::Int(i64::from(removed))
            }
            Op::ZRangeByScore { key, min, max } => match self.live(&key, now) {
                Some(Entry {
                    value: Value::ZSet(set),
                    ..
                }) => {
                    let mut members: Vec<_> = set
                        .iter()
                        .filter(|(_, score)| (min..=max).contains(*score))
                        .map(|(member, score)| (*score, member.clone()))
                        .collect();
                    members.sort();
                    Reply::List(members.into_iter().map(|(_, member)| member).collect())
                }
                Some(_) => return Err(wrong_type(&key)),
                None => Reply::List(Vec::new()),
            },
            Op::SAdd { key, member } => {
                let Value::Set(set) = self.value_or_insert(
                    &key,
                    now,
                    || Value::Set(BTreeSet::new()),
                    |v| matches!(v, Value::Set(_)),
                )?
                else {
                    return Err(wrong_type(&key));
                };
                Reply::Int(i64::from(set.insert(member)))
            }
            Op::SRem { key, member } => {
                let removed = match self.live(&key, now) {
                    Some(Entry {
                        value: Value::Set(set),
                        ..
                    }) => set.remove(&member),
                    Some(_) => return Err(wrong_type(&key)),
                    None => false,
                };
                self.remove_if_empty(&key);
                Reply::Int(i64::from(removed))
            }
            Op::SMembers { key } => match self.live(&key, now) {
                Some(Entry {
                    value: Value::Set(set),
                    ..
                }) => Reply::List(set.iter().cloned().collect()),
                Some(_) => return Err(wrong_type(&key)),
                None => Reply::List(Vec::new()),
            },
            Op::IncrWindow { key, window } => {
                let entry = match self.live(&key, now) {
                    Some(entry) => entry,
                    None => self.keys.entry(key.clone()).or_insert(Entry {
                        value: Value::Text("0".to_owned()),
                        expires_at: None,
                    }),
                };
                let Value::Text(text) = &mut entry.value else {
                    return Err(wrong_type(&key));
                };
                let count = text.parse::<i64>().map_err(|_| wrong_type(&key))? + 1;
                *text = count.to_string();
                if count == 1 {
                    entry.expires_at = Some(now + window);
                }
                Reply::Int(count)
            }
            Op::TouchPresence { key, fields, ttl } => {
                let existed = self.live(&key, now).is_some();
                let fields = if existed {
                    fields
                        .into_iter()
                        .filter(|(field, _)| field == "lastSeen")
                        .collect()
                } else {
                    fields
                };
                self.apply(
                    Op::HSet {
                        key: key.clone(),
                        fields,
                    },
                    now,
                    metrics,
                )?;
                self.apply(Op::Expire { key, ttl }, now, metrics)?;
                Reply::Int(i64::from(!existed))
            }
            Op::MergeJson { key, patch, ttl } => {
                let mut object = match self.live(&key, now) {
                    Some(Entry {
                        value: Value::Text(text),
                        ..
                    }) => serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
                        .unwrap_or_default(),
                    Some(_) => return Err(wrong_type(&key)),
                    None => serde_json::Map::new(),
                };
                let patch: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&patch).map_err(|e| {
                        StoreError::Command(format!("patch is not a JSON object: {e}"))
                    })?;
                object.extend(patch);
                self.keys.insert(
                    key,
                    Entry {
                        value: Value::Text(serde_json::Value::Object(object).to_string()),
                        expires_at: Some(now + ttl),
                    },
                );
                Reply::Int(1)
            }
            Op::RPush { key, value } => {
                let Value::List(list) = self.value_or_insert(
                    &key,
                    now,
                    || Value::List(VecDeque::new()),
                    |v| matches!(v, Value::List(_)),
                )?
                else {
                    return Err(wrong_type(&key));
                };
                list.push_back(value);
                Reply::Int(i64::try_from(list.len()).unwrap_or(i64::MAX))
            }
            Op::TrimToNewest { key, max_len } => {
                if let Some(Entry {
                    value: Value::List(list),
                    ..
                }) = self.live(&key, now)
                {
                    let excess = list.len().saturating_sub(max_len);
                    list.drain(..excess);
                }
                self.remove_if_empty(&key);
                Reply::Ok
            }
            Op::LPush { key, value } => {
                let Value::List(list) = self.value_or_insert(
                    &key,
                    now,
                    || Value::List(VecDeque::new()),
                    |v| matches!(v, Value::List(_)),
                )?
                else {
                    return Err(wrong_type(&key));
                };
                list.push_front(value);
                Reply::Int(i64::try_from(list.len()).unwrap_or(i64::MAX))
            }
            Op::LRem { key, count, value } => {
                let removed = match self.live(&key, now) {
                    Some(Entry {
                        value: Value::List(list),
                        ..
                    }) => remove_from_list(list, count, &value),
                    Some(_) => return Err(wrong_type(&key)),
                    None => 0,
                };
                self.remove_if_empty(&key);
                Reply::Int(removed)
            }
            Op::LRange { key, start, stop } => match self.live(&key, now) {
                Some(Entry {
                    value: Value::List(list),
                    ..
                }) => Reply::List(list_range(list, start, stop)),
                Some(_) => return Err(wrong_type(&key)),
                None => Reply::List(Vec::new()),
            },
            Op::IncrWindowOnce {
                key,
                window,
                claim_key,
                claim_ttl,
            } => {
                if let Some(entry) = self.live(&claim_key, now) {
                    let Value::Text(kept) = &entry.value else {
                        return Err(wrong_type(&claim_key));
                    };
                    return Ok(Reply::Int(
                        kept.parse().map_err(|_| wrong_type(&claim_key))?,
                    ));
                }
                let count = self.apply(Op::IncrWindow { key, window }, now, metrics)?;
                let kept = Op::Set {
                    key: claim_key,
                    value: count.as_int().unwrap_or(0).to_string(),
                    ttl: Some(claim_ttl),
                    only_if_absent: false,
                };
                self.apply(kept, now, metrics)?;
                count
            }
            Op::ForgetIfEmpty {
                index,
                member,
                list,
            } => match self.live(&list, now) {
                Some(_) => Reply::Int(0),
                None => self.apply(Op::SRem { key: index, member }, now, metrics)?,
            },
            Op::RenewLease { key, owner, ttl } => match self.live(&key, now) {
                Some(entry) if matches!(&entry.value, Value::Text(holder) if *holder == owner) => {
                    entry.expires_at = Some(now + ttl);
                    Reply::Int(1)
                }
                _ => Reply::Int(0),
            },
            Op::ReleaseLease { key, owner } => match self.live(&key, now) {
                Some(entry) if matches!(&entry.value, Value::Text(holder) if *holder == owner) => {
                    self.keys.remove(&key);
                    Reply::Int(1)
                }
                _ => Reply::Int(0),
            },
            Op::PublishOnce {
                claim_key,
                claim_value,
                ttl,
                channel,
                payload,
            } => {
                let claim = Op::Set {
                    key: claim_key,
                    value: claim_value,
                    ttl: Some(ttl),
                    only_if_absent: true,
                };
                if self.apply(claim, now, metrics)? == Reply::Nil {
                    return Ok(Reply::Int(0));
                }
                self.apply(Op::Publish { channel, payload }, now, metrics)?;
                Reply::Int(1)
            }
            Op::Publish { channel, payload } => {
                let mut receivers = 0;
                self.subscribers
                    .retain(|subscriber| !subscriber.sender.is_closed());
                for subscriber in &self.subscribers {
                    if !subscriber.patterns.iter().any(|p| p.matches(&channel)) {
                        continue;
                    }
                    receivers += 1;
                    let message = BusMessage {
                        channel: channel.clone(),
                        payload: payload.clone().into_bytes(),
                        received_at: Instant::now(),
                    };
                    if subscriber.sender.try_send(message).is_err() {
                        metrics.subscriber_overflow.inc();
                        tracing::warn!(%channel, "hub loop queue full; message dropped");
                    }
                }
                Reply::Int(receivers)
            }
        })
    }
}

/// `LREM` semantics: `count` > 0 removes from the head, < 0 from the tail, 0 removes all.
fn remove_from_list(list: &mut VecDeque<String>, count: i64, value: &str) -> i64 {
    let limit = if count == 0 {
        usize::MAX
    } else {
        usize::try_from(count.unsigned_abs()).unwrap_or(usize::MAX)
    };
    let mut positions: Vec<usize> = list
        .iter()
        .enumerate()
        .filter(|(_, entry)| *entry == value)
        .map(|(index, _)| index)
        .collect();
    if count < 0 {
        positions.reverse();
    }
    positions.truncate(limit);
    positions.sort_unstable_by(|a, b| b.cmp(a));
    for index in &positions {
        list.remove(*index);
    }
    i64::try_from(positions.len()).unwrap_or(i64::MAX)
}

/// `LRANGE` index semantics: negative indexes count from the end, both ends inclusive.
fn list_range(list: &VecDeque<String>, start: isize, stop: isize) -> Vec<String> {
    let len = isize::try_from(list.len()).unwrap_or(isize::MAX);
    let resolve = |index: isize| if index < 0 { len + index } else { index };
    let (start, stop) = (resolve(start).max(0), resolve(stop).min(len - 1));
    if start > stop {
        return Vec::new();
    }
    list.iter()
        .skip(start.unsigned_abs())
        .take((stop - start + 1).unsigned_abs())
        .cloned()
        .collect()
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

    #[test]
    fn list_range_follows_lrange() {
        let list: VecDeque<String> = ["a", "b", "c"].map(String::from).into();
        assert_eq!(list_range(&list, 0, -1), ["a", "b", "c"]);
        assert_eq!(list_range(&list, -2, -1), ["b", "c"]);
        assert_eq!(list_range(&list, 5, 9), Vec::<String>::new());
    }
}
