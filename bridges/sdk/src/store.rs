//! The key-value and publish operations of the hub's store, as one closed enum.
//!
//! Both buses (Redis and the embedded in-process bus) interpret the same [`Op`]s, so every piece of
//! state keeping is written once and a batch of ops is one round trip (a Redis pipeline).

use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::fence::Fence;
pub use crate::keys::Keys;

/// One key-value or publish operation. Keys are full keys, prefix included (see [`Keys`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Get {
        key: String,
    },
    /// `SET key value [PX ttl] [NX]`; replies `Ok`, or `Nil` when `only_if_absent` found the key.
    Set {
        key: String,
        value: String,
        ttl: Option<Duration>,
        only_if_absent: bool,
    },
    Del {
        key: String,
    },
    Exists {
        key: String,
    },
    Expire {
        key: String,
        ttl: Duration,
    },
    /// Remaining time to live in milliseconds; `-1` without a TTL, `-2` when the key is absent.
    TtlMillis {
        key: String,
    },
    HSet {
        key: String,
        fields: Vec<(String, String)>,
    },
    HGetAll {
        key: String,
    },
    ZAdd {
        key: String,
        score: i64,
        member: String,
    },
    ZRem {
        key: String,
        member: String,
    },
    ZRangeByScore {
        key: String,
        min: i64,
        max: i64,
    },
    /// Replies `Int(1)` when the member is new.
    SAdd {
        key: String,
        member: String,
    },
    SRem {
        key: String,
        member: String,
    },
    SMembers {
        key: String,
    },
    /// The fixed-window counter of SPEC section 4: `INCR`, and `EXPIRE window` only when the
    /// increment made it 1. Replies the new count.
    IncrWindow {
        key: String,
        window: Duration,
    },
    /// Refreshes a presence hash: when the key exists only `lastSeen` and the TTL are refreshed
    /// (the status someone set is kept); when it is absent all fields are written. Replies
    /// `Int(1)` when the key was absent, i.e. the person just came online.
    TouchPresence {
        key: String,
        fields: Vec<(String, String)>,
        ttl: Duration,
    },
    /// Merges a JSON object into the JSON object stored under `key` (creating it), then sets the
    /// TTL: `channel.update` keeps the channel metadata this way.
    MergeJson {
        key: String,
        patch: String,
        ttl: Duration,
    },
    RPush {
        key: String,
        value: String,
    },
    /// Keeps only the newest `max_len` entries of a list.
    TrimToNewest {
        key: String,
        max_len: usize,
    },
    LPush {
        key: String,
        value: String,
    },
    /// Removes up to `count` entries equal to `value` (LREM semantics: 0 = all).
    LRem {
        key: String,
        count: i64,
        value: String,
    },
    LRange {
        key: String,
        start: isize,
        stop: isize,
    },
    /// Replaces the first entry equal to `old` with `new`, where it stands (a queued job that took
    /// in a newer one keeps its place). Replies `Int(1)` when `old` was there, `Int(0)` when not.
    LReplace {
        key: String,
        old: String,
        new: String,
    },
    /// Takes the lease `key` if it is free or `owner` already holds it (the next run of its
    /// bridge there), with a fencing token larger than any before: `INCR fence_key` in the same
    /// atomic step, and the lease's value set to `{owner}:{token}` ([`Fence::holder`]) for `ttl`.
    /// Replies the token, or `Int(0)` when another owner holds the lease.
    AcquireLease {
        key: String,
        fence_key: String,
        owner: String,
        ttl: Duration,
    },
    /// Extends a lease if `fence` still holds it; replies `Int(1)` when it did.
    RenewLease {
        fence: Fence,
        ttl: Duration,
    },
    /// Replies `Int(1)` when `fence` still holds its lease, `Int(0)` when not: an outbox worker
    /// asks before each delivery attempt.
    CheckFence {
        fence: Fence,
    },
    /// Rewrites a job's entries in its outbox list in one atomic step, and only while `fence`
    /// (when there is one) still holds its lease: removes one entry equal to each of `remove`,
    /// pushes `head` (if any) to the front, then removes `member` from the set `index` if the
    /// list is left empty. Replies `Int(1)` when done, `Int(0)` when the fence refused it. An
    /// outbox finishes a job (no `head`) and saves a job's progress (its new entry as `head`)
    /// with it.
    UpdateJob {
        fence: Option<Fence>,
        list: String,
        remove: Vec<String>,
        head: Option<String>,
        index: String,
        member: String,
    },
    /// Queues a job in its outbox list in one atomic step, and only while `fence` (when there is
    /// one) still holds its lease: `RPUSH list value`, then `SADD index member`. Replies `Int(1)`
    /// when queued, `Int(0)` when the fence refused it: a run that lost its lease adds nothing to
    /// the lists the new holder works from.
    PushJob {
        fence: Option<Fence>,
        list: String,
        value: String,
        index: String,
        member: String,
    },
    /// `SET key value` (no TTL) only while `fence` (when there is one) still holds its lease;
    /// replies `Int(1)` when set, `Int(0)` when the fence refused it. The handover mark is written
    /// with it ([`crate::handover::Mark`]), so a run that lost its lease cannot move it.
    SetFenced {
        fence: Option<Fence>,
        key: String,
        value: String,
    },
    /// [`Op::IncrWindow`] counted once per `claim_key`: the first time, the counter is incremented
    /// and the new count is kept under `claim_key` for `claim_ttl`; again with the same claim, the
    /// kept count is replied and nothing is counted. A platform event retried after a store error
    /// is so counted once against its sender's limit.
    IncrWindowOnce {
        key: String,
        window: Duration,
        claim_key: String,
        claim_ttl: Duration,
    },
    /// Removes `member` from the set `index` if the list `list` is empty, atomically (so a job
    /// pushed meanwhile keeps its list indexed). Replies `Int(1)` when removed.
    ForgetIfEmpty {
        index: String,
        member: String,
        list: String,
    },
    /// Releases a lease if `fence` still holds it.
    ReleaseLease {
        fence: Fence,
    },
    Publish {
        channel: String,
        payload: String,
    },
    /// Publishes only if `claim_key` is not set yet, and sets it (with `ttl`) in the same atomic
    /// step; replies `Int(1)` when published, `Int(0)` for a duplicate. This is how a platform
    /// update is published exactly once even when it is delivered again after a crash.
    PublishOnce {
        claim_key: String,
        claim_value: String,
        ttl: Duration,
        channel: String,
        payload: String,
    },
}

/// What an [`Op`] answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Ok,
    Int(i64),
    Text(String),
    List(Vec<String>),
    Pairs(Vec<(String, String)>),
}

impl Reply {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(n) => Some(*n),
            Self::Text(text) => text.parse().ok(),
            _ => None,
        }
    }

    pub fn into_text(self) -> Option<String> {
        match self {
            Self::Text(text) => Some(text),
            Self::Int(n) => Some(n.to_string()),
            _ => None,
        }
    }

    pub fn into_list(self) -> Vec<String> {
        match self {
            Self::List(items) => items,
            _ => Vec::new(),
        }
    }

    pub fn into_pairs(self) -> Vec<(String, String)> {
        match self {
            Self::Pairs(pairs) => pairs,
            _ => Vec::new(),
        }
    }
}

/// Why a batch of ops did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached now; the caller should retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refused a command (wrong type, script error, ...).
    #[error("store command failed: {0}")]
    Command(String),
}

/// The hub's key-value store and publisher.
pub trait Store: Send + Sync + 'static {
    /// Runs the ops in order, in one round trip, and returns one reply per op. An error reply to
    /// any op fails the whole call (the other ops may have run).
    fn exec(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<Vec<Reply>, StoreError>>;

    /// Runs the ops in order and returns one outcome per op: an error reply (a wrong key type,
    /// a script error) affects only its own op. The outer error means nothing is known about the
    /// batch (the store is unreachable). Both buses run the batch in one round trip; this default
    /// runs the ops one by one.
    fn exec_each(
        &self,
        ops: Vec<Op>,
    ) -> BoxFuture<'_, Result<Vec<Result<Reply, StoreError>>, StoreError>> {
        Box::pin(async move {
            let mut outcomes = Vec::with_capacity(ops.len());
            for op in ops {
                let outcome = match self.exec(vec![op]).await {
                    Ok(mut replies) => Ok(replies.pop().unwrap_or(Reply::Nil)),
                    Err(StoreError::Command(error)) => Err(StoreError::Command(error)),
                    Err(unavailable) => return Err(unavailable),
                };
                outcomes.push(outcome);
            }
            Ok(outcomes)
        })
    }
}

impl dyn Store {
    /// Runs a single op.
    pub async fn one(&self, op: Op) -> Result<Reply, StoreError> {
        let mut replies = self.exec(vec![op]).await?;
        replies
            .pop()
            .ok_or_else(|| StoreError::Command("no reply".to_owned()))
    }

    pub async fn publish(&self, channel: String, payload: String) -> Result<(), StoreError> {
        self.one(Op::Publish { channel, payload }).await.map(drop)
    }
}

/// A store in memory for the SDK's unit tests: text keys, lists and sets, and a record of what
/// was published; enough for `/dm` choices, the rate-limit counters, leases (without expiry) and
/// the relay engine.
#[cfg(test)]
pub(crate) mod memory {
    use std::collections::{BTreeSet, HashMap};
    use std::sync::Mutex;

    use futures_util::future::BoxFuture;

    use super::{Op, Reply, Store, StoreError};
    use crate::fence::Fence;

    #[derive(Default)]
    struct State {
        text: HashMap<String, String>,
        lists: HashMap<String, Vec<String>>,
        sets: HashMap<String, BTreeSet<String>>,
        published: Vec<(String, String)>,
    }

    #[derive(Default)]
    pub(crate) struct MemoryStore {
        state: Mutex<State>,
        /// How many of the next `exec` calls fail as if the store were away.
        failures: std::sync::atomic::AtomicUsize,
    }

    impl MemoryStore {
        pub(crate) fn is_empty(&self) -> bool {
            let state = self.state.lock().unwrap();
            state.text.is_empty() && state.lists.is_empty() && state.sets.is_empty()
        }

        /// Makes the next `count` calls fail as if the store were unreachable.
        pub(crate) fn fail_next(&self, count: usize) {
            self.failures
                .store(count, std::sync::atomic::Ordering::SeqCst);
        }

        /// What was published, as (channel, payload), oldest first.
        pub(crate) fn published(&self) -> Vec<(String, String)> {
            self.state.lock().unwrap().published.clone()
        }

        /// The text keys, sorted.
        pub(crate) fn text_keys(&self) -> Vec<String> {
            let mut keys: Vec<String> = self.state.lock().unwrap().text.keys().cloned().collect();
            keys.sort();
            keys
        }

        /// Whether the lease `fence` names still holds its value.
        fn holds(keys: &HashMap<String, String>, fence: &Fence) -> bool {
            keys.get(fence.key()) == Some(&fence.holder())
        }

        fn apply(state: &mut State, op: Op) -> Result<Reply, StoreError> {
            let incr = |keys: &mut HashMap<String, String>, key: String| {
                let count = keys
                    .get(&key)
                    .and_then(|n| n.parse::<i64>().ok())
                    .unwrap_or(0)
                    + 1;
                keys.insert(key, count.to_string());
                count
            };
            let keys = &mut state.text;
            Ok(match op {
                Op::Get { key } => keys.get(&key).cloned().map_or(Reply::Nil, Reply::Text),
                Op::Set {
                    key,
                    value,
                    only_if_absent,
                    ..
                } => {
                    if only_if_absent && keys.contains_key(&key) {
                        return Ok(Reply::Nil);
                    }
                    keys.insert(key, value);
                    Reply::Ok
                }
                Op::Del { key } => {
                    let gone = keys.remove(&key).is_some()
                        | state.lists.remove(&key).is_some()
                        | state.sets.remove(&key).is_some();
                    Reply::Int(i64::from(gone))
                }
                Op::Exists { key } => Reply::Int(i64::from(
                    keys.contains_key(&key)
                        || state.lists.contains_key(&key)
                        || state.sets.contains_key(&key),
                )),
                Op::IncrWindow { key, .. } => Reply::Int(incr(keys, key)),
                Op::IncrWindowOnce { key, claim_key, .. } => {
                    if let Some(count) = keys.get(&claim_key) {
                        return Ok(Reply::Int(count.parse().unwrap_or(0)));
                    }
                    let count = incr(keys, key);
                    keys.insert(claim_key, count.to_string());
                    Reply::Int(count)
                }
                Op::RPush { key, value } => {
                    let list = state.lists.entry(key).or_default();
                    list.push(value);
                    Reply::Int(list.len() as i64)
                }
                Op::LPush { key, value } => {
                    let list = state.lists.entry(key).or_default();
                    list.insert(0, value);
                    Reply::Int(list.len() as i64)
                }
                Op::LRem { key, count, value } => {
                    let list = state.lists.entry(key.clone()).or_default();
                    let mut removed = 0;
                    list.retain(|entry| {
                        let remove = entry == &value && (count == 0 || removed < count.abs());
                        removed += i64::from(remove);
                        !remove
                    });
                    if list.is_empty() {
                        state.lists.remove(&key);
                    }
                    Reply::Int(removed)
                }
                Op::LRange { key, .. } => {
                    Reply::List(state.lists.get(&key).cloned().unwrap_or_default())
                }
                Op::LReplace { key, old, new } => {
                    let found = state
                        .lists
                        .get_mut(&key)
                        .and_then(|list| list.iter_mut().find(|entry| **entry == old));
                    Reply::Int(found.map_or(0, |entry| {
                        *entry = new;
                        1
                    }))
                }
                Op::TrimToNewest { key, max_len } => {
                    if let Some(list) = state.lists.get_mut(&key) {
                        let excess = list.len().saturating_sub(max_len);
                        list.drain(..excess);
                    }
                    Reply::Ok
                }
                Op::SAdd { key, member } => {
                    Reply::Int(i64::from(state.sets.entry(key).or_default().insert(member)))
                }
                Op::SMembers { key } => Reply::List(
                    state
                        .sets
                        .get(&key)
                        .map(|set| set.iter().cloned().collect())
                        .unwrap_or_default(),
                ),
                Op::ForgetIfEmpty {
                    index,
                    member,
                    list,
                } => {
                    if state.lists.get(&list).is_some_and(|list| !list.is_empty()) {
                        return Ok(Reply::Int(0));
                    }
                    let removed = state
                        .sets
                        .get_mut(&index)
                        .is_some_and(|set| set.remove(&member));
                    Reply::Int(i64::from(removed))
                }
                Op::AcquireLease {
                    key,
                    fence_key,
                    owner,
                    ..
                } => {
                    let ours = format!("{owner}:");
                    if keys.get(&key).is_some_and(|held| !held.starts_with(&ours)) {
                        return Ok(Reply::Int(0));
                    }
                    let token = incr(keys, fence_key);
                    keys.insert(key, format!("{owner}:{token}"));
                    Reply::Int(token)
                }
                Op::RenewLease { fence, .. } | Op::CheckFence { fence } => {
                    Reply::Int(i64::from(Self::holds(keys, &fence)))
                }
                Op::ReleaseLease { fence } => {
                    let held = Self::holds(keys, &fence);
                    if held {
                        keys.remove(fence.key());
                    }
                    Reply::Int(i64::from(held))
                }
                Op::UpdateJob {
                    fence,
                    list,
                    remove,
                    head,
                    index,
                    member,
                } => {
                    if fence.is_some_and(|fence| !Self::holds(keys, &fence)) {
                        return Ok(Reply::Int(0));
                    }
                    let entries = state.lists.entry(list.clone()).or_default();
                    for value in remove {
                        if let Some(at) = entries.iter().position(|entry| *entry == value) {
                            entries.remove(at);
                        }
                    }
                    if let Some(head) = head {
                        entries.insert(0, head);
                    }
                    if entries.is_empty() {
                        state.lists.remove(&list);
                        if let Some(set) = state.sets.get_mut(&index) {
                            set.remove(&member);
                        }
                    }
                    Reply::Int(1)
                }
                Op::PushJob {
                    fence,
                    list,
                    value,
                    index,
                    member,
                } => {
                    if fence.is_some_and(|fence| !Self::holds(keys, &fence)) {
                        return Ok(Reply::Int(0));
                    }
                    state.lists.entry(list).or_default().push(value);
                    state.sets.entry(index).or_default().insert(member);
                    Reply::Int(1)
                }
                Op::SetFenced { fence, key, value } => {
                    if fence.is_some_and(|fence| !Self::holds(keys, &fence)) {
                        return Ok(Reply::Int(0));
                    }
                    keys.insert(key, value);
                    Reply::Int(1)
                }
                Op::Publish { channel, payload } => {
                    state.published.push((channel, payload));
                    Reply::Int(1)
                }
                Op::PublishOnce {
                    claim_key,
                    claim_value,
                    channel,
                    payload,
                    ..
                } => {
                    if keys.contains_key(&claim_key) {
                        return Ok(Reply::Int(0));
                    }
                    keys.insert(claim_key, claim_value);
                    state.published.push((channel, payload));
                    Reply::Int(1)
                }
                other => return Err(StoreError::Command(format!("unsupported: {other:?}"))),
            })
        }
    }

    impl Store for MemoryStore {
        fn exec(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<Vec<Reply>, StoreError>> {
            use std::sync::atomic::Ordering::SeqCst;
            let failing = self
                .failures
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return Box::pin(async { Err(StoreError::Command("LOADING".to_owned())) });
            }
            let mut state = self.state.lock().unwrap();
            let replies = ops
                .into_iter()
                .map(|op| Self::apply(&mut state, op))
                .collect();
            Box::pin(async move { replies })
        }
    }
}
