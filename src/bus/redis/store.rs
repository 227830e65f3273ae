//! The command side of the Redis bus: [`RedisStore`], its lazily connected manager that is
//! replaced after a timeout, the mapping of each [`Op`] onto a pipeline entry, and the reading of
//! replies and errors (which server errors mean "not now" rather than "never").

use std::time::Duration;

use futures_util::future::BoxFuture;
use hub_bridge_sdk::{Op, Reply, Store, StoreError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::scripts::{
    ACQUIRE_LEASE, CHECK_FENCE, FORGET_IF_EMPTY, INCR_WINDOW, INCR_WINDOW_ONCE, LIST_REPLACE,
    MERGE_JSON, PUBLISH_ONCE, RELEASE_LEASE, RENEW_LEASE, TOUCH_PRESENCE, UPDATE_JOB,
};
use super::MAX_RECONNECT_DELAY;

/// The command side of the Redis bus: each batch of ops is one pipeline, one round trip.
///
/// A response timeout is not a disconnect to redis-rs, so a connection that went silent (the
/// network dropped it without a reset) would time out forever; after a timeout the store
/// replaces its connection instead.
pub struct RedisStore {
    client: redis::Client,
    // A std mutex: held only to clone or replace the manager, never across an await.
    manager: std::sync::Mutex<ConnectionManager>,
}

impl RedisStore {
    const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

    pub(super) fn new(client: redis::Client) -> redis::RedisResult<Self> {
        let manager = Self::connect(&client)?;
        Ok(Self {
            client,
            manager: std::sync::Mutex::new(manager),
        })
    }

    /// A manager that connects on first use, so the service starts while Redis is down.
    fn connect(client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_max_delay(MAX_RECONNECT_DELAY)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Self::RESPONSE_TIMEOUT));
        ConnectionManager::new_lazy_with_config(client.clone(), config)
    }

    fn manager(&self) -> ConnectionManager {
        self.manager
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn replace_silent_connection(&self) {
        match Self::connect(&self.client) {
            Ok(fresh) => {
                *self
                    .manager
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                tracing::warn!("redis command connection timed out; replaced it");
            }
            Err(error) => tracing::warn!(%error, "could not replace the redis command connection"),
        }
    }
}

impl RedisStore {
    /// Runs the ops as one pipeline; with `per_op`, error replies come back per op (as
    /// `Value::ServerError`) instead of failing the whole pipeline.
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
        let mut connection = self.manager();
        match pipe.query_async(&mut connection).await {
            Ok(values) => Ok((values, shapes)),
            Err(error) => {
                if error.is_timeout() {
                    self.replace_silent_connection();
                }
                Err(store_error(error))
            }
        }
    }
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
            let cmd = pipe.cmd("EVAL").arg(UPDATE_JOB);
            match fence {
                Some(fence) => cmd
                    .arg(3)
                    .arg(list)
                    .arg(index)
                    .arg(fence.key())
                    .arg(fence.holder()),
                None => cmd.arg(2).arg(list).arg(index).arg(""),
            };
            cmd.arg(member)
                .arg(head.as_deref().unwrap_or(""))
                .arg(remove);
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
