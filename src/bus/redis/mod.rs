//! The Redis bus: a RESP3 subscriber that survives outages, and a separate command connection.
//!
//! The subscriber is a `ConnectionManager` with automatic resubscription and an unlimited retry
//! budget with a capped delay. redis-rs discards resubscription failures and a silent connection
//! does not count as a disconnect, so a watchdog PINGs every second and waits for the three
//! subscription confirmations after every disconnect; when either does not come it rebuilds the
//! connection from scratch. Commands go through a second connection, so heavy inbound traffic never
//! delays state writes.
//!
//! With `redis.sentinels` the primary is whichever node Redis Sentinel names: both sides ask the
//! Sentinels again whenever they rebuild a connection, so they follow a failover without a
//! restart (`primary`). With `redis.wait_replicas`, durable writes end with `WAIT` (`store`).
//!
//! This module owns the bus itself ([`RedisBus`]: the URL check, the subscription task it spawns
//! and the store it hands out). Where the primary is lives in `primary`, the subscriber and its
//! watchdog in `subscriber`, the command connections and the mapping of ops onto a pipeline in
//! `store`, and the Lua scripts of the multi-step ops in `scripts`.

mod primary;
mod scripts;
mod store;
mod subscriber;

use std::sync::Arc;
use std::time::Duration;

use hub_bridge_sdk::health::{Component, Health};
use hub_bridge_sdk::metrics::Metrics;
use hub_bridge_sdk::Store;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::store::RedisStore;

pub use self::primary::node_settings;
use self::primary::Primary;
use self::store::Replicas;
use self::subscriber::Subscriber;
use super::{Bus, BusMessage};
use crate::config::RedisConfig;

/// The cap on reconnect delays (PLATFORMS.md: the defaults never came back after a 15 s outage).
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// Why the Redis bus could not be set up: which key, and what kind of problem (never the URL: it
/// may carry a password).
#[derive(Debug, thiserror::Error)]
#[error("{key} is not a usable Redis URL: {reason}")]
pub struct InvalidRedisUrl {
    key: String,
    reason: String,
}

impl InvalidRedisUrl {
    fn new(key: &str, error: &redis::RedisError) -> Self {
        Self {
            key: key.to_owned(),
            reason: format!("{:?}", error.kind()),
        }
    }
}

/// The Redis bus.
pub struct RedisBus {
    primary: Arc<Primary>,
    store: Arc<RedisStore>,
    metrics: Arc<Metrics>,
    status: Component,
}

impl RedisBus {
    /// Prepares both connections to the one Redis at `url`; nothing connects until first use, so
    /// the service starts (and `/readyz` reports the outage) while Redis is down.
    pub fn new(
        url: &str,
        metrics: Arc<Metrics>,
        status: Component,
    ) -> Result<Self, InvalidRedisUrl> {
        let primary = Arc::new(Primary::fixed(url)?);
        let store = RedisStore::new(primary.clone(), None);
        Ok(Self {
            primary,
            store: Arc::new(store),
            metrics,
            status,
        })
    }

    /// The bus `[redis]` describes: `url` or `sentinels` (the caller checked that one is set),
    /// and `wait_replicas`. Reports as the `redis` component of `health`, and with
    /// `wait_replicas` as `redis_replicas` too.
    pub fn from_config(
        config: &RedisConfig,
        metrics: Arc<Metrics>,
        health: &Health,
    ) -> Result<Self, InvalidRedisUrl> {
        let primary = match (&config.sentinels, &config.url, &config.master_name) {
            (Some(sentinels), _, Some(master_name)) => {
                let urls: Vec<&str> = sentinels.iter().map(|url| url.expose()).collect();
                let password = config.password.as_ref().map(|password| password.expose());
                Primary::sentinel(&urls, master_name, password)?
            }
            (_, Some(url), _) => Primary::fixed(url.expose())?,
            _ => {
                return Err(InvalidRedisUrl {
                    key: "redis.url".to_owned(),
                    reason: "neither redis.url nor redis.sentinels with redis.master_name is set"
                        .to_owned(),
                })
            }
        };
        let primary = Arc::new(primary);
        let replicas = (config.wait_replicas > 0).then(|| {
            Replicas::new(
                config.wait_replicas,
                metrics.clone(),
                health.component("redis_replicas"),
            )
        });
        let store = RedisStore::new(primary.clone(), replicas);
        Ok(Self {
            primary,
            store: Arc::new(store),
            metrics,
            status: health.component("redis"),
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
            primary: self.primary.clone(),
            sender,
            metrics: self.metrics.clone(),
            status: self.status.clone(),
        };
        tasks.spawn(subscriber.run(shutdown));
        receiver
    }
}
