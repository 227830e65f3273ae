//! The hub's message bus: pub/sub on the hub's three channel families plus the key-value store.
//!
//! Two implementations share one contract: [`redis::RedisBus`] (production) and
//! [`embedded::EmbeddedBus`] (one process, nothing persisted; used when `redis.url` is absent).

pub mod embedded;
pub mod redis;

use std::sync::Arc;
use std::time::Instant;

use hub_bridge_sdk::Store;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The patterns the hub loop subscribes to (SPEC section 2). Exactly these: every pattern on the
/// server taxes every PUBLISH.
pub const CHANNEL_PATTERNS: [&str; 2] = ["pubsub:channel:*", "pubsub:agent:*"];
pub const GLOBAL_CHANNEL: &str = "pubsub:global";

/// One pub/sub message as it came off the bus.
#[derive(Debug)]
pub struct BusMessage {
    pub channel: String,
    pub payload: Vec<u8>,
    pub received_at: Instant,
}

/// A bus the hub loop can subscribe to and keep state in.
pub trait Bus: Send + Sync + 'static {
    /// The key-value store and publisher on this bus.
    fn store(&self) -> Arc<dyn Store>;

    /// Subscribes to the hub's channels. Messages arrive on the returned receiver until `shutdown`;
    /// the subscription survives outages on its own (reconnect, re-subscribe), and a full receiver
    /// drops messages with a count instead of blocking the bus.
    fn subscribe(
        &self,
        capacity: usize,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> mpsc::Receiver<BusMessage>;
}
