//! The Redis bus: a RESP3 subscriber that survives outages, and a separate command connection.
//!
//! The subscriber is a `ConnectionManager` with automatic resubscription and an unlimited retry
//! budget with a capped delay. redis-rs discards resubscription failures and a silent connection
//! does not count as a disconnect, so a watchdog PINGs every second and waits for the three
//! subscription confirmations after every disconnect; when either does not come it rebuilds the
//! connection from scratch. Commands go through a second connection, so heavy inbound traffic never
//! delays state writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use hub_bridge_sdk::health::Component;
use hub_bridge_sdk::metrics::Metrics;
use hub_bridge_sdk::{Op, Reply, Store, StoreError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionInfo, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Bus, BusMessage, CHANNEL_PATTERNS, GLOBAL_CHANNEL};

/// How often the watchdog PINGs, and how many missed answers make it rebuild the connection.
const PING_EVERY: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
const MISSED_PINGS_BEFORE_REBUILD: u32 = 3;
/// How long re-subscription after a disconnect may take before the connection is rebuilt.
const RESUBSCRIBE_DEADLINE: Duration = Duration::from_secs(5);
/// The cap on reconnect delays (PLATFORMS.md: the defaults never came back after a 15 s outage).
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// Increments a fixed-window counter and starts the window on the first increment, atomically.
const INCR_WINDOW: &str = "local n = redis.call('INCR', KEYS[1]) \
    if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return n";
/// Refreshes a presence hash; writes all fields only when it was absent. Returns 1 when absent.
const TOUCH_PRESENCE: &str = "local existed = redis.call('EXISTS', KEYS[1]) \
    if existed == 1 then redis.call('HSET', KEYS[1], 'lastSeen', ARGV[2]) \
    else redis.call('HSET', KEYS[1], unpack(ARGV, 3)) end \
    redis.call('PEXPIRE', KEYS[1], ARGV[1]) return 1 - existed";
/// Merges a JSON object into the stored one. Redis' cjson turns `{}` into `[]`, hence the guard.
const MERGE_JSON: &str = "local current = redis.call('GET', KEYS[1]) \
    local object = {} \
    if current then local ok, decoded = pcall(cjson.decode, current) \
      if ok and type(decoded) == 'table' then object = decoded end end \
    for k, v in pairs(cjson.decode(ARGV[1])) do object[k] = v end \
    local encoded = next(object) == nil and '{}' or cjson.encode(object) \
    redis.call('SET', KEYS[1], encoded, 'PX', ARGV[2]) return 1";
/// Counts once per claim: the count the first increment made is kept under the claim key.
const INCR_WINDOW_ONCE: &str = "local kept = redis.call('GET', KEYS[2]) \
    if kept then return tonumber(kept) end \
    local n = redis.call('INCR', KEYS[1]) \
    if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
    redis.call('SET', KEYS[2], n, 'PX', ARGV[2]) return n";
const FORGET_IF_EMPTY: &str = "if redis.call('LLEN', KEYS[1]) == 0 then \
    return redis.call('SREM', KEYS[2], ARGV[1]) else return 0 end";
const PUBLISH_ONCE: &str = "if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then \
    redis.call('PUBLISH', ARGV[3], ARGV[4]) return 1 else return 0 end";
const RENEW_LEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
const RELEASE_LEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('DEL', KEYS[1]) else return 0 end";

// Scripts are sent as text with EVAL, not by hash with EVALSHA: a restarted Redis has forgotten
// every script, an EVALSHA in a pipeline then fails while the commands around it still run, and
// retrying the pipeline would run those twice (a second PUBLISH, a counter counted twice).
// Redis caches the compiled script, so EVAL costs only hashing the text again.

/// Why the Redis bus could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("redis.url is not a usable Redis URL: {0}")]
pub struct InvalidRedisUrl(String);

/// The Redis bus.
pub struct RedisBus {
    info: ConnectionInfo,
    store: Arc<RedisStore>,
    metrics: Arc<Metrics>,
    status: Component,
}

impl RedisBus {
    /// Prepares both connections; nothing connects until first use, so the service starts (and
    /// `/readyz` reports the outage) while Redis is down.
    pub fn new(
        url: &str,
        metrics: Arc<Metrics>,
        status: Component,
    ) -> Result<Self, InvalidRedisUrl> {
        // The URL may carry a password: errors name the problem, never the URL.
        let info = url
            .into_connection_info()
            .map_err(|error| InvalidRedisUrl(format!("{:?}", error.kind())))?;
        let client = redis::Client::open(info.clone())
            .map_err(|e| InvalidRedisUrl(format!("{:?}", e.kind())))?;
        let store =
            RedisStore::new(client).map_err(|e| InvalidRedisUrl(format!("{:?}", e.kind())))?;
        Ok(Self {
            info,
            store: Arc::new(store),
            metrics,
            status,
        })
    }
}

impl Bus for RedisBus {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn subscribe(
        &self,
        capacity: usize,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> mpsc::Receiver<BusMessage> {
        let (sender, receiver) = mpsc::channel(capacity);
        let subscriber = Subscriber {
            info: self.info.clone(),
            sender,
            metrics: self.metrics.clone(),
            status: self.status.clone(),
        };
        tasks.spawn(subscriber.run(shutdown));
        receiver
    }
}

/// Owns the subscription and rebuilds it whenever the watchdog says it is gone.
struct Subscriber {
    info: ConnectionInfo,
    sender: mpsc::Sender<BusMessage>,
    metrics: Arc<Metrics>,
    status: Component,
}

/// A subscription-related push: everything that is not a message.
#[derive(Debug)]
enum Control {
    Disconnected,
    Subscribed,
}

impl Subscriber {
    #[tracing::instrument(name = "redis_subscriber", skip_all)]
    async fn run(self, shutdown: CancellationToken) {
        let mut delay = Duration::from_millis(100);
        let mut first = true;
        while !shutdown.is_cancelled() {
            if !first {
                self.metrics.redis_reconnects.inc();
            }
            first = false;
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = self.session() => outcome,
            };
            let Err(reason) = outcome else { return };
            self.status.not_ready(&reason);
            tracing::warn!(%reason, retry_in = ?delay, "redis subscription lost");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RECONNECT_DELAY);
        }
    }

    /// Connects, subscribes and watches one connection until it is beyond repair.
    async fn session(&self) -> Result<(), String> {
        let (control_tx, mut control) = mpsc::unbounded_channel();
        let push_sender = {
            let sender = self.sender.clone();
            let metrics = self.metrics.clone();
            move |push: PushInfo| -> Result<(), redis::aio::SendError> {
                route_push(push, &sender, &control_tx, &metrics);
                Ok(())
            }
        };
        let redis_settings = self
            .info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = self.info.clone().set_redis_settings(redis_settings);
        let client = redis::Client::open(info).map_err(|e| e.to_string())?;
        let config = ConnectionManagerConfig::new()
            .set_push_sender(push_sender)
            .set_automatic_resubscription()
            .set_number_of_retries(usize::MAX)
            .set_max_delay(MAX_RECONNECT_DELAY)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(PING_TIMEOUT));
        let mut manager = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| format!("cannot connect: {:?}", e.kind()))?;
        for pattern in CHANNEL_PATTERNS {
            manager
                .psubscribe(pattern)
                .await
                .map_err(|e| format!("PSUBSCRIBE failed: {:?}", e.kind()))?;
        }
        manager
            .subscribe(GLOBAL_CHANNEL)
            .await
            .map_err(|e| format!("SUBSCRIBE failed: {:?}", e.kind()))?;
        self.status.ready("subscribed");
        tracing::info!("redis subscription established");

        let expected_confirmations = CHANNEL_PATTERNS.len() + 1;
        let mut confirmations_since_disconnect = expected_confirmations;
        let mut resubscribe_deadline: Option<Instant> = None;
        let mut missed_pings = 0;
        let mut ticker = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                Some(event) = control.recv() => match event {
                    Control::Disconnected => {
                        self.status.not_ready("connection lost; reconnecting");
                        self.metrics.redis_reconnects.inc();
                        confirmations_since_disconnect = 0;
                        resubscribe_deadline = Some(Instant::now() + RESUBSCRIBE_DEADLINE);
                    }
                    Control::Subscribed => {
                        confirmations_since_disconnect += 1;
                        if confirmations_since_disconnect == expected_confirmations {
                            resubscribe_deadline = None;
                            self.status.ready("re-subscribed");
                            tracing::info!("redis subscription restored");
                        }
                    }
                },
                _ = ticker.tick() => {
                    let ping = redis::cmd("PING");
                    let answer = ping.query_async::<redis::Value>(&mut manager);
                    match tokio::time::timeout(PING_TIMEOUT, answer).await {
                        Ok(Ok(_)) => {
                            if missed_pings > 0 && resubscribe_deadline.is_none() {
                                self.status.ready("subscribed");
                            }
                            missed_pings = 0;
                        }
                        _ => {
                            missed_pings += 1;
                            self.status.not_ready("redis is not answering PING");
                        }
                    }
                    if missed_pings >= MISSED_PINGS_BEFORE_REBUILD {
                        return Err(format!("{missed_pings} PINGs unanswered"));
                    }
                    if resubscribe_deadline.is_some_and(|deadline| Instant::now() > deadline)
                        && missed_pings == 0
                    {
                        return Err("re-subscription not confirmed".to_owned());
                    }
                }
            }
        }
    }
}

/// Hands a push to the hub loop (messages) or to the watchdog (everything else), never blocking.
fn route_push(
    push: PushInfo,
    sender: &mpsc::Sender<BusMessage>,
    control: &mpsc::UnboundedSender<Control>,
    metrics: &Metrics,
) {
    let received_at = Instant::now();
    let mut data = push.data;
    match (push.kind, data.len()) {
        (PushKind::Message, 2) | (PushKind::PMessage, 3) => {}
        (PushKind::Disconnection, _) => {
            let _ = control.send(Control::Disconnected);
            return;
        }
        (PushKind::Subscribe | PushKind::PSubscribe, _) => {
            let _ = control.send(Control::Subscribed);
            return;
        }
        _ => return,
    }
    // The last two items are the channel and the payload; moved out, not copied.
    let (Some(payload), Some(channel)) = (data.pop().and_then(bytes), data.pop().and_then(bytes))
    else {
        return;
    };
    let message = BusMessage {
        channel: String::from_utf8_lossy(&channel).into_owned(),
        payload,
        received_at,
    };
    if let Err(error) = sender.try_send(message) {
        metrics.subscriber_overflow.inc();
        if let mpsc::error::TrySendError::Full(message) = error {
            tracing::warn!(channel = %message.channel, "hub loop queue full; message dropped");
        }
    }
}

fn bytes(value: redis::Value) -> Option<Vec<u8>> {
    match value {
        redis::Value::BulkString(bytes) => Some(bytes),
        redis::Value::SimpleString(text) => Some(text.into_bytes()),
        _ => None,
    }
}

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

    fn new(client: redis::Client) -> redis::RedisResult<Self> {
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
        Op::RenewLease { key, owner, ttl } => {
            pipe.cmd("EVAL")
                .arg(RENEW_LEASE)
                .arg(1)
                .arg(key)
                .arg(owner)
                .arg(millis(*ttl));
        }
        Op::ReleaseLease { key, owner } => {
            pipe.cmd("EVAL")
                .arg(RELEASE_LEASE)
                .arg(1)
                .arg(key)
                .arg(owner);
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
