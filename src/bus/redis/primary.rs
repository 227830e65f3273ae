//! Where the Redis primary is: the one `redis.url`, or the primary Redis Sentinel names for
//! `redis.master_name`, asked again every time a connection is (re)built so that both the command
//! connections and the subscription follow a failover without a restart.
//!
//! redis-rs' `ConnectionManager` reconnects to the address it was built with, so it cannot follow
//! a failover on its own; the bus rebuilds its managers from [`Primary::client`] instead when the
//! node is gone or no longer the primary. Whichever connection notices first (usually the
//! subscriber, told at once by a disconnection push) moves the [`Primary::epoch`] on, so the
//! others rebuild before their next use instead of failing once on the dead node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{Client, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use super::InvalidRedisUrl;

/// How long finding the primary may take: the Sentinels, then a `ROLE` on the node they name.
/// redis-rs sets no timeout of its own on these connections.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// How the bus reaches the primary, and which primary its connections should be on.
pub(super) struct Primary {
    way: Way,
    /// Moves on whenever the primary is lost or found at another address; a connection built
    /// under an older epoch is rebuilt before its next use.
    epoch: AtomicU64,
    /// The address the last lookup found (a std mutex: held for a compare and swap only).
    last_found: Mutex<Option<String>>,
}

enum Way {
    /// `redis.url`: always the same node.
    Fixed(Client),
    /// `redis.sentinels`: whichever node the Sentinels name now.
    Sentinel {
        // A tokio mutex: a lookup needs `&mut Sentinel` (it caches its Sentinel connections) and
        // awaits; concurrent rebuilds queue behind one lookup.
        sentinel: tokio::sync::Mutex<Sentinel>,
        master_name: String,
        /// How the primary they name is reached: its password (`redis.password`), if any.
        node: SentinelNodeConnectionInfo,
    },
}

impl Primary {
    /// The one node `url` names.
    pub(super) fn fixed(url: &str) -> Result<Self, InvalidRedisUrl> {
        let info = parse("redis.url", url)?;
        let client = Client::open(info).map_err(|e| InvalidRedisUrl::new("redis.url", &e))?;
        Ok(Self::new(Way::Fixed(client)))
    }

    /// The primary the Sentinels at `urls` monitor as `master_name`, reached with `password`.
    pub(super) fn sentinel(
        urls: &[&str],
        master_name: &str,
        password: Option<&str>,
    ) -> Result<Self, InvalidRedisUrl> {
        let infos = urls
            .iter()
            .enumerate()
            .map(|(index, url)| parse(&format!("redis.sentinels[{index}]"), url))
            .collect::<Result<Vec<_>, _>>()?;
        let sentinel =
            Sentinel::build(infos).map_err(|e| InvalidRedisUrl::new("redis.sentinels", &e))?;
        Ok(Self::new(Way::Sentinel {
            sentinel: tokio::sync::Mutex::new(sentinel),
            master_name: master_name.to_owned(),
            node: node_info(password),
        }))
    }

    fn new(way: Way) -> Self {
        Self {
            way,
            epoch: AtomicU64::new(0),
            last_found: Mutex::new(None),
        }
    }

    /// The current epoch: connections built under another one are stale.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Says the primary a connection was on is gone (the connection dropped, or the node answers
    /// as a replica), so every connection built before asks again. Only when the primary can
    /// move: a fixed node's connections reconnect to it on their own.
    pub(super) fn lost(&self) {
        if self.can_move() {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Whether the primary can move: then a lost connection, or a node that answers as a
    /// replica, means asking the Sentinels again rather than reconnecting to the same address.
    pub(super) fn can_move(&self) -> bool {
        matches!(self.way, Way::Sentinel { .. })
    }

    /// A client for the primary as of now. With Sentinel this asks the Sentinels (in the order
    /// configured, the first that names a node that answers `ROLE` as a primary wins); the error
    /// says why none did, and never quotes a URL.
    pub(super) async fn client(&self) -> Result<Client, String> {
        match &self.way {
            Way::Fixed(client) => Ok(client.clone()),
            Way::Sentinel {
                sentinel,
                master_name,
                node,
            } => {
                let mut sentinel = sentinel.lock().await;
                let lookup = sentinel.async_master_for(master_name, Some(node));
                match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                    Ok(Ok(client)) => {
                        self.found(address(&client));
                        Ok(client)
                    }
                    Ok(Err(error)) => Err(format!(
                        "no primary for `{master_name}` from the sentinels ({:?}: {})",
                        error.kind(),
                        error.detail().unwrap_or("no detail")
                    )),
                    Err(_) => Err(format!(
                        "no primary for `{master_name}` from the sentinels within {LOOKUP_TIMEOUT:?}"
                    )),
                }
            }
        }
    }
}

impl Primary {
    /// Notes where a lookup found the primary; a new address moves the epoch on.
    fn found(&self, address: String) {
        let mut last_found = self
            .last_found
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last_found.as_ref() != Some(&address) {
            if last_found.is_some() {
                tracing::warn!(primary = %address, "redis primary moved (Sentinel failover)");
                self.epoch.fetch_add(1, Ordering::AcqRel);
            }
            *last_found = Some(address);
        }
    }
}

/// How the data nodes the Sentinels name are reached: with `password` (`redis.password`), if any.
pub fn node_settings(password: Option<&str>) -> RedisConnectionInfo {
    let settings = RedisConnectionInfo::default();
    match password {
        Some(password) => settings.set_password(password),
        None => settings,
    }
}

fn node_info(password: Option<&str>) -> SentinelNodeConnectionInfo {
    SentinelNodeConnectionInfo::default().set_redis_connection_info(node_settings(password))
}

/// Parses one URL; the error names the key and the kind of problem, never the URL (it may carry
/// a password).
fn parse(key: &str, url: &str) -> Result<ConnectionInfo, InvalidRedisUrl> {
    url.into_connection_info()
        .map_err(|error| InvalidRedisUrl::new(key, &error))
}

/// `host:port` of a client's node, for logs and reasons (no password: the address only).
pub(super) fn address(client: &Client) -> String {
    client.get_connection_info().addr().to_string()
}
