//! The command side of the Redis bus: [`RedisStore`], its lazily connected managers that are
//! rebuilt after a timeout (and, under Sentinel, when the primary moves), the mapping of each
//! [`Op`] onto a pipeline entry, the `WAIT` that follows durable writes, and the reading of
//! replies and errors (which server errors mean "not now" rather than "never").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use hub_bridge_sdk::health::Component;
use hub_bridge_sdk::metrics::Metrics;
use hub_bridge_sdk::{Fence, Op, Reply, Store, StoreError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::primary::{address, Primary};
use super::scripts::{
    ACQUIRE_LEASE, CHECK_FENCE, FORGET_IF_EMPTY, INCR_WINDOW, INCR_WINDOW_ONCE, LIST_REPLACE,
    MERGE_JSON, PUBLISH_ONCE, PUSH_JOB, RELEASE_LEASE, RENEW_LEASE, SET_FENCED, TOUCH_PRESENCE,
    UPDATE_JOB,
};
use super::MAX_RECONNECT_DELAY;

/// The command side of the Redis bus: each batch of ops is one pipeline, one round trip.
///
/// A response timeout is not a disconnect to redis-rs, so a connection that went silent (the
/// network dropped it without a reset) would time out forever; after a timeout the store
/// replaces its connection instead. Under Sentinel it also replaces it when the node is gone or
/// answers as a replica (`READONLY`), asking the Sentinels for the primary again.
pub struct RedisStore {
    primary: Arc<Primary>,
    commands: Slot,
    /// With `redis.wait_replicas`: the batches that wait for replicas, on their own connection
    /// (a `WAIT` holds its connection for up to a second, and would hold up the hub loop's
    /// commands behind it).
    durable: Option<(Slot, Replicas)>,
}

impl RedisStore {
    const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

    pub(super) fn new(primary: Arc<Primary>, replicas: Option<Replicas>) -> Self {
        Self {
            primary,
            commands: Slot::default(),
            durable: replicas.map(|replicas| (Slot::default(), replicas)),
        }
    }

    /// A manager that connects on first use, so the service starts while Redis is down.
    fn connect(client: redis::Client) -> redis::RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_max_delay(MAX_RECONNECT_DELAY)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Self::RESPONSE_TIMEOUT));
        ConnectionManager::new_lazy_with_config(client, config)
    }

    /// The slot's manager, built (after asking where the primary is) when there is none.
    /// A manager built under an older [`Primary::epoch`] is on a primary that is gone: rebuilt.
    async fn manager(&self, slot: &Slot) -> Result<(u64, ConnectionManager), StoreError> {
        if let Some(current) = slot.current(self.primary.epoch()) {
            return Ok(current);
        }
        // One rebuild at a time: the others wait for it instead of asking the Sentinels too.
        let _rebuilding = slot.rebuild.lock().await;
        if let Some(current) = slot.current(self.primary.epoch()) {
            return Ok(current);
        }
        let client = self
            .primary
            .client()
            .await
            .map_err(StoreError::Unavailable)?;
        // Read after the lookup: it may have moved the epoch on itself (a new address).
        let epoch = self.primary.epoch();
        let node = address(&client);
        let manager = Self::connect(client).map_err(store_error)?;
        if self.primary.can_move() {
            tracing::info!(%node, "redis command connection to the primary");
        }
        Ok(slot.set(epoch, manager))
    }

    /// Drops a manager that cannot be trusted any more, so the next batch builds a fresh one:
    /// after a timeout (a silent connection), and when the primary can move, after a lost
    /// connection or a write refused by a replica.
    fn after_error(&self, slot: &Slot, generation: u64, error: &redis::RedisError) {
        let moved = self.primary.can_move()
            && (error.is_io_error()
                || error.is_connection_refusal()
                || error.is_connection_dropped()
                || error.code() == Some("READONLY"));
        if moved {
            self.primary.lost();
        }
        if (error.is_timeout() || moved) && slot.forget(generation) {
            tracing::warn!(
                reason = if error.is_timeout() {
                    "timed out"
                } else {
                    "lost or not the primary"
                },
                "redis command connection replaced"
            );
        }
    }
}

/// One lazily built connection manager, replaced as a whole when it goes bad.
#[derive(Default)]
struct Slot {
    // A std mutex: held only to clone or swap the manager, never across an await. The generation
    // lets an error drop only the manager it came from, not one a concurrent batch just built;
    // the epoch is the primary's when it was built.
    current: std::sync::Mutex<Option<Built>>,
    rebuild: tokio::sync::Mutex<()>,
    generations: AtomicU64,
}

#[derive(Clone)]
struct Built {
    generation: u64,
    epoch: u64,
    manager: ConnectionManager,
}

impl Slot {
    /// The manager and its generation, unless there is none or it was built under another epoch.
    fn current(&self, epoch: u64) -> Option<(u64, ConnectionManager)> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .filter(|built| built.epoch == epoch)
            .map(|built| (built.generation, built.manager.clone()))
    }

    fn set(&self, epoch: u64, manager: ConnectionManager) -> (u64, ConnectionManager) {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Built {
            generation,
            epoch,
            manager: manager.clone(),
        });
        (generation, manager)
    }

    /// Forgets the manager of `generation`; false when it was already replaced.
    fn forget(&self, generation: u64) -> bool {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current
            .as_ref()
            .is_some_and(|built| built.generation == generation)
        {
            *current = None;
            return true;
        }
        false
    }
}

/// `redis.wait_replicas`: how many replicas must acknowledge a durable batch, and what the store
/// shows when they do not.
///
/// After a shortfall the store is degraded: for [`Replicas::RETRY_AFTER`] durable batches go on
/// without waiting (each counted as a shortfall: nothing acknowledged it), so a missing replica
/// costs one stalled second per window instead of one per write; then the next batch waits again
/// and decides.
pub(super) struct Replicas {
    wanted: u32,
    metrics: Arc<Metrics>,
    /// The `redis_replicas` component of `/readyz`: ready throughout (the writes stand on the
    /// primary), its detail saying whether the last durable write was acknowledged.
    status: Component,
    degraded_until: std::sync::Mutex<Option<Instant>>,
}

impl Replicas {
    /// How long `WAIT` may take: the spec's one second.
    const WAIT_MILLIS: u64 = 1000;
    const RETRY_AFTER: Duration = Duration::from_secs(5);

    pub(super) fn new(wanted: u32, metrics: Arc<Metrics>, status: Component) -> Self {
        status.ready(&format!(
            "waiting for {wanted} replica(s) on durable writes; none yet"
        ));
        Self {
            wanted,
            metrics,
            status,
            degraded_until: std::sync::Mutex::new(None),
        }
    }

    /// Whether the next durable batch should wait, or go on at once because the store is
    /// degraded.
    fn should_wait(&self) -> bool {
        let degraded_until = self
            .degraded_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        degraded_until.is_none_or(|until| Instant::now() >= until)
    }

    /// Reads `WAIT`'s reply: the number of replicas that acknowledged.
    fn record(&self, reply: Option<redis::Value>) {
        let acknowledged = match reply {
            Some(redis::Value::Int(n)) => u32::try_from(n).unwrap_or(0),
            _ => 0,
        };
        let mut degraded_until = self
            .degraded_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if acknowledged >= self.wanted {
            if degraded_until.take().is_some() {
                tracing::info!(
                    acknowledged,
                    "redis replicas acknowledge durable writes again"
                );
            }
            self.status.ready(&format!(
                "{acknowledged} of {} replica(s) acknowledged the last durable write",
                self.wanted
            ));
            return;
        }
        self.metrics.redis_wait_shortfalls.inc();
        if degraded_until.is_none() {
            tracing::warn!(
                acknowledged,
                wanted = self.wanted,
                "redis replicas did not acknowledge a durable write within 1 s; going on"
            );
        }
        *degraded_until = Some(Instant::now() + Self::RETRY_AFTER);
        self.status.ready(&format!(
            "degraded: {acknowledged} of {} replica(s) acknowledged the last durable write \
             within 1 s (redis.wait_replicas)",
            self.wanted
        ));
    }

    /// A durable batch written without waiting, while degraded.
    fn record_unconfirmed(&self) {
        self.metrics.redis_wait_shortfalls.inc();
    }
}

/// Whether a batch holding `op` is durable: it writes the records the relay relies on across a
/// failover (SPEC section 6): outbox jobs and their index (`RPush`, `LPush`, `LRem`, `LReplace`,
/// `ForgetIfEmpty`, `PushJob`, `UpdateJob`), the handover mark (`SetFenced`), the message map,
/// cursors, claims and leases (`Set`,
/// `PublishOnce`; `AcquireLease`, whose fencing counter must never go back). The hub's
/// own derived state (presence, members, typing, agent cards), rate windows and plain publishes
/// are not: the next event rebuilds them, and waiting on each would put a replication round trip
/// into the hub loop for every event. A match without a wildcard, so a new op must be placed.
fn is_durable(op: &Op) -> bool {
    match op {
        Op::Set { .. }
        | Op::RPush { .. }
        | Op::LPush { .. }
        | Op::LRem { .. }
        | Op::LReplace { .. }
        | Op::ForgetIfEmpty { .. }
        | Op::UpdateJob { .. }
        | Op::PushJob { .. }
        | Op::SetFenced { .. }
        | Op::AcquireLease { .. }
        | Op::PublishOnce { .. } => true,
        Op::Get { .. }
        | Op::Del { .. }
        | Op::Exists { .. }
        | Op::Expire { .. }
        | Op::TtlMillis { .. }
        | Op::HSet { .. }
        | Op::HGetAll { .. }
        | Op::ZAdd { .. }
        | Op::ZRem { .. }
        | Op::ZRangeByScore { .. }
        | Op::SAdd { .. }
        | Op::SRem { .. }
        | Op::SMembers { .. }
        | Op::IncrWindow { .. }
        | Op::TouchPresence { .. }
        | Op::MergeJson { .. }
        | Op::TrimToNewest { .. }
        | Op::LRange { .. }
        | Op::IncrWindowOnce { .. }
        | Op::RenewLease { .. }
        | Op::ReleaseLease { .. }
        | Op::CheckFence { .. }
        | Op::Publish { .. } => false,
    }
}

impl RedisStore {
    /// Runs the ops as one pipeline; with `per_op`, error replies come back per op (as
    /// `Value::ServerError`) instead of failing the whole pipeline. A durable batch ends with
    /// `WAIT` when `redis.wait_replicas` asks for it.
    async fn pipeline(
        &self,
        ops: &[Op],
        per_op: bool,
    ) -> Result<(Vec<redis::Value>, Vec<Shape>), StoreError> {
        let mut pipe = redis::pipe();
        if per_op {
            pipe.ignore_errors();
        }
        let shapes: Vec<Shape> = ops
            .iter()
            .map(|op| add_to_pipeline(&mut pipe, op))
            .collect();
        let (slot, replicas) = match &self.durable {
            Some((slot, replicas)) if ops.iter().any(is_durable) => (slot, Some(replicas)),
            _ => (&self.commands, None),
        };
        let waits = replicas.is_some_and(Replicas::should_wait);
        if let Some(replicas) = replicas.filter(|_| waits) {
            pipe.cmd("WAIT")
                .arg(replicas.wanted)
                .arg(Replicas::WAIT_MILLIS);
        }
        let (generation, mut connection) = self.manager(slot).await?;
        let mut values: Vec<redis::Value> = match pipe.query_async(&mut connection).await {
            Ok(values) => values,
            Err(error) => {
                self.after_error(slot, generation, &error);
                return Err(store_error(error));
            }
        };
        if let Some(replicas) = replicas {
            if waits {
                replicas.record(values.pop());
            } else {
                replicas.record_unconfirmed();
            }
        }
        if self.primary.can_move() && values.iter().any(is_readonly) {
            self.primary.lost();
            slot.forget(generation);
        }
        Ok((values, shapes))
    }
}

/// A per-op error reply from a node that is a replica now.
fn is_readonly(value: &redis::Value) -> bool {
    matches!(value, redis::Value::ServerError(error) if error.code() == "READONLY")
}

impl Store for RedisStore {
    fn exec(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<Vec<Reply>, StoreError>> {
        Box::pin(async move {
            let (values, shapes) = self.pipeline(&ops, false).await?;
            Ok(values
                .into_iter()
                .zip(shapes)
                .map(|(value, shape)| to_reply(value, shape))
                .collect())
        })
    }

    fn exec_each(
        &self,
        ops: Vec<Op>,
    ) -> BoxFuture<'_, Result<Vec<Result<Reply, StoreError>>, StoreError>> {
        Box::pin(async move {
            let (values, shapes) = self.pipeline(&ops, true).await?;
            Ok(values
                .into_iter()
                .zip(shapes)
                .map(|(value, shape)| match value {
                    redis::Value::ServerError(error) => {
                        let for_now = UNAVAILABLE_CODES.contains(&error.code());
                        let text = redis::RedisError::from(error).to_string();
                        Err(if for_now {
                            StoreError::Unavailable(text)
                        } else {
                            StoreError::Command(text)
                        })
                    }
                    value => Ok(to_reply(value, shape)),
                })
                .collect())
        })
    }
}

/// How a reply should be read.
#[derive(Clone, Copy)]
enum Shape {
    Plain,
    Pairs,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn add_to_pipeline(pipe: &mut redis::Pipeline, op: &Op) -> Shape {
    match op {
        Op::Get { key } => {
            pipe.cmd("GET").arg(key);
        }
        Op::Set {
            key,
            value,
            ttl,
            only_if_absent,
        } => {
            let cmd = pipe.cmd("SET").arg(key).arg(value);
            if let Some(ttl) = ttl {
                cmd.arg("PX").arg(millis(*ttl));
            }
            if *only_if_absent {
                cmd.arg("NX");
            }
        }
        Op::Del { key } => {
            pipe.cmd("DEL").arg(key);
        }
        Op::Exists { key } => {
            pipe.cmd("EXISTS").arg(key);
        }
        Op::Expire { key, ttl } => {
            pipe.cmd("PEXPIRE").arg(key).arg(millis(*ttl));
        }
        Op::TtlMillis { key } => {
            pipe.cmd("PTTL").arg(key);
        }
        Op::HSet { key, fields } => {
            let cmd = pipe.cmd("HSET").arg(key);
            for (field, value) in fields {
                cmd.arg(field).arg(value);
            }
        }
        Op::HGetAll { key } => {
            pipe.cmd("HGETALL").arg(key);
            return Shape::Pairs;
        }
        Op::ZAdd { key, score, member } => {
            pipe.cmd("ZADD").arg(key).arg(score).arg(member);
        }
        Op::ZRem { key, member } => {
            pipe.cmd("ZREM").arg(key).arg(member);
        }
        Op::ZRangeByScore { key, min, max } => {
            pipe.cmd("ZRANGEBYSCORE").arg(key).arg(min).arg(max);
        }
        Op::SAdd { key, member } => {
            pipe.cmd("SADD").arg(key).arg(member);
        }
        Op::SRem { key, member } => {
            pipe.cmd("SREM").arg(key).arg(member);
        }
        Op::SMembers { key } => {
            pipe.cmd("SMEMBERS").arg(key);
        }
        Op::IncrWindow { key, window } => {
            pipe.cmd("EVAL")
                .arg(INCR_WINDOW)
                .arg(1)
                .arg(key)
                .arg(millis(*window));
        }
        Op::TouchPresence { key, fields, ttl } => {
            let last_seen = fields
                .iter()
                .find(|(field, _)| field == "lastSeen")
                .map_or("0", |(_, value)| value.as_str());
            let cmd = pipe
                .cmd("EVAL")
                .arg(TOUCH_PRESENCE)
                .arg(1)
                .arg(key)
                .arg(millis(*ttl))
                .arg(last_seen);
            for (field, value) in fields {
                cmd.arg(field).arg(value);
            }
        }
        Op::MergeJson { key, patch, ttl } => {
            pipe.cmd("EVAL")
                .arg(MERGE_JSON)
                .arg(1)
                .arg(key)
                .arg(patch)
                .arg(millis(*ttl));
        }
        Op::RPush { key, value } => {
            pipe.cmd("RPUSH").arg(key).arg(value);
        }
        Op::TrimToNewest { key, max_len } => {
            let keep = isize::try_from(*max_len).unwrap_or(isize::MAX);
            pipe.cmd("LTRIM").arg(key).arg(-keep).arg(-1);
        }
        Op::LPush { key, value } => {
            pipe.cmd("LPUSH").arg(key).arg(value);
        }
        Op::LRem { key, count, value } => {
            pipe.cmd("LREM").arg(key).arg(count).arg(value);
        }
        Op::LRange { key, start, stop } => {
            pipe.cmd("LRANGE").arg(key).arg(start).arg(stop);
        }
        Op::LReplace { key, old, new } => {
            pipe.cmd("EVAL")
                .arg(LIST_REPLACE)
                .arg(1)
                .arg(key)
                .arg(old)
                .arg(new);
        }
        Op::IncrWindowOnce {
            key,
            window,
            claim_key,
            claim_ttl,
        } => {
            pipe.cmd("EVAL")
                .arg(INCR_WINDOW_ONCE)
                .arg(2)
                .arg(key)
                .arg(claim_key)
                .arg(millis(*window))
                .arg(millis(*claim_ttl));
        }
        Op::ForgetIfEmpty {
            index,
            member,
            list,
        } => {
            pipe.cmd("EVAL")
                .arg(FORGET_IF_EMPTY)
                .arg(2)
                .arg(list)
                .arg(index)
                .arg(member);
        }
        Op::AcquireLease {
            key,
            fence_key,
            owner,
            ttl,
        } => {
            pipe.cmd("EVAL")
                .arg(ACQUIRE_LEASE)
                .arg(2)
                .arg(key)
                .arg(fence_key)
                .arg(owner)
                .arg(millis(*ttl));
        }
        Op::RenewLease { fence, ttl } => {
            pipe.cmd("EVAL")
                .arg(RENEW_LEASE)
                .arg(1)
                .arg(fence.key())
                .arg(fence.holder())
                .arg(millis(*ttl));
        }
        Op::CheckFence { fence } => {
            pipe.cmd("EVAL")
                .arg(CHECK_FENCE)
                .arg(1)
                .arg(fence.key())
                .arg(fence.holder());
        }
        Op::UpdateJob {
            fence,
            list,
            remove,
            head,
            index,
            member,
        } => {
            fenced(pipe, UPDATE_JOB, &[list, index], fence.as_ref())
                .arg(member)
                .arg(head.as_deref().unwrap_or(""))
                .arg(remove);
        }
        Op::PushJob {
            fence,
            list,
            value,
            index,
            member,
        } => {
            fenced(pipe, PUSH_JOB, &[list, index], fence.as_ref())
                .arg(value)
                .arg(member);
        }
        Op::SetFenced { fence, key, value } => {
            fenced(pipe, SET_FENCED, &[key], fence.as_ref()).arg(value);
        }
        Op::ReleaseLease { fence } => {
            pipe.cmd("EVAL")
                .arg(RELEASE_LEASE)
                .arg(1)
                .arg(fence.key())
                .arg(fence.holder());
        }
        Op::Publish { channel, payload } => {
            pipe.cmd("PUBLISH").arg(channel).arg(payload);
        }
        Op::PublishOnce {
            claim_key,
            claim_value,
            ttl,
            channel,
            payload,
        } => {
            pipe.cmd("EVAL")
                .arg(PUBLISH_ONCE)
                .arg(1)
                .arg(claim_key)
                .arg(claim_value)
                .arg(millis(*ttl))
                .arg(channel)
                .arg(payload);
        }
    }
    Shape::Plain
}

/// `EVAL script` of a fenced script with its `keys`, then the fence: with one, its lease key is
/// the last key and ARGV[1] the lease's expected value; without, ARGV[1] is `''` (and the script
/// checks nothing). The op's own arguments follow.
fn fenced<'a>(
    pipe: &'a mut redis::Pipeline,
    script: &str,
    keys: &[&String],
    fence: Option<&Fence>,
) -> &'a mut redis::Pipeline {
    let cmd = pipe.cmd("EVAL").arg(script);
    match fence {
        Some(fence) => cmd
            .arg(keys.len() + 1)
            .arg(keys)
            .arg(fence.key())
            .arg(fence.holder()),
        None => cmd.arg(keys.len()).arg(keys).arg(""),
    }
}

fn text(value: redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        redis::Value::SimpleString(text) | redis::Value::VerbatimString { text, .. } => Some(text),
        redis::Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn to_reply(value: redis::Value, shape: Shape) -> Reply {
    match (value, shape) {
        (redis::Value::Nil, _) => Reply::Nil,
        (redis::Value::Okay, _) => Reply::Ok,
        (redis::Value::Int(n), _) => Reply::Int(n),
        (redis::Value::Map(pairs), _) => Reply::Pairs(
            pairs
                .into_iter()
                .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
                .collect(),
        ),
        (redis::Value::Array(items) | redis::Value::Set(items), Shape::Pairs) => {
            let mut items = items.into_iter().filter_map(text);
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                pairs.push((k, v));
            }
            Reply::Pairs(pairs)
        }
        (redis::Value::Array(items) | redis::Value::Set(items), Shape::Plain) => {
            Reply::List(items.into_iter().filter_map(text).collect())
        }
        (other, _) => text(other).map_or(Reply::Nil, Reply::Text),
    }
}

/// Server error codes that mean "not now" rather than "never": the server is loading, a replica,
/// out of memory or unable to persist. A write refused with one of these is retried by its caller
/// (the inbound path waits, SPEC section 9) instead of being dropped as a bad command.
const UNAVAILABLE_CODES: [&str; 9] = [
    "LOADING",
    "READONLY",
    "MISCONF",
    "OOM",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "NOREPLICAS",
];

fn store_error(error: redis::RedisError) -> StoreError {
    let text = error.to_string();
    let connection = error.is_io_error()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_timeout();
    // A pipeline's error carries every failed command's server error.
    let refused_for_now = error.into_server_errors().is_some_and(|errors| {
        errors
            .iter()
            .any(|(_, error)| UNAVAILABLE_CODES.contains(&error.code()))
    });
    if connection || refused_for_now {
        StoreError::Unavailable(text)
    } else {
        StoreError::Command(text)
    }
}
