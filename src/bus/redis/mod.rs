//! The Redis bus: a RESP3 subscriber that survives outages, and a separate command connection.
//!
//! The subscriber is a `ConnectionManager` with automatic resubscription and an unlimited retry
//! budget with a capped delay. redis-rs discards resubscription failures and a silent connection
//! does not count as a disconnect, so a watchdog PINGs every second and waits for the three
//! subscription confirmations after every disconnect; when either does not come it rebuilds the
//! connection from scratch. Commands go through a second connection, so heavy inbound traffic never
//! delays state writes.
//!
//! This module owns the bus itself ([`RedisBus`]: the URL check, the subscription task it spawns
//! and the store it hands out). The subscriber and its watchdog are in `subscriber`, the command
//! connection and the mapping of ops onto a pipeline in `store`, and the Lua scripts of the
//! multi-step ops in `scripts`.

mod scripts;
mod store;
mod subscriber;

use std::sync::Arc;
use std::time::Duration;

use hub_bridge_sdk::health::Component;
use hub_bridge_sdk::metrics::Metrics;
use hub_bridge_sdk::Store;
use redis::{ConnectionInfo, IntoConnectionInfo};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::store::RedisStore;

use self::subscriber::Subscriber;
use super::{Bus, BusMessage};

/// The cap on reconnect delays (PLATFORMS.md: the defaults never came back after a 15 s outage).
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

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
