//! The hub's side of an end-to-end test: a spy that subscribes to every `pubsub:*` channel on the
//! test's redis-server and keeps what it sees (re-subscribing after a Redis restart), waits for
//! events matching a predicate, and a publisher for the events agents would send.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// One payload seen on the hub.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The pub/sub channel, such as `pubsub:channel:C`.
    pub channel: String,
    /// The raw payload.
    pub raw: String,
    /// The payload as JSON (`Value::Null` when it is not JSON).
    pub json: Value,
}

impl Seen {
    /// The event inside an envelope, or the payload itself for a bare event.
    pub fn event(&self) -> &Value {
        match self.json.get("event") {
            Some(event) if event.get("type").is_some() => event,
            _ => &self.json,
        }
    }

    /// The event's `type`.
    pub fn kind(&self) -> &str {
        self.event()["type"].as_str().unwrap_or_default()
    }
}

/// Records everything published on `pubsub:*`.
pub struct HubSpy {
    seen: Arc<Mutex<Vec<Seen>>>,
    version: watch::Sender<u64>,
    subscriptions: watch::Receiver<u64>,
    task: AbortHandle,
}

impl Drop for HubSpy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HubSpy {
    /// Subscribes and returns once the subscription is active.
    pub async fn start(redis_url: &str) -> HubSpy {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (version, _) = watch::channel(0u64);
        let (subscribed, mut subscriptions) = watch::channel(0u64);
        let client = redis::Client::open(redis_url).expect("redis url");
        let task = {
            let seen = seen.clone();
            let version = version.clone();
            tokio::spawn(async move {
                loop {
                    // Reconnects quickly: a Redis restart in a test must lose as little as possible.
                    let Ok(mut pubsub) = client.get_async_pubsub().await else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    if pubsub.psubscribe("pubsub:*").await.is_err() {
                        continue;
                    }
                    subscribed.send_modify(|n| *n += 1);
                    let mut messages = pubsub.into_on_message();
                    while let Some(message) = messages.next().await {
                        let raw = String::from_utf8_lossy(message.get_payload_bytes()).into_owned();
                        let json = serde_json::from_str(&raw).unwrap_or(Value::Null);
                        let entry = Seen {
                            channel: message.get_channel_name().to_owned(),
                            raw,
                            json,
                        };
                        seen.lock().unwrap_or_else(|p| p.into_inner()).push(entry);
                        version.send_modify(|n| *n += 1);
                    }
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(10), subscriptions.wait_for(|n| *n > 0))
            .await
            .expect("the hub spy subscribes within 10 s")
            .expect("spy task alive");
        HubSpy {
            seen,
            version,
            subscriptions,
            task: task.abort_handle(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Seen>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many times the spy has (re)subscribed.
    pub fn subscriptions(&self) -> u64 {
        *self.subscriptions.borrow()
    }

    /// Waits until the spy has subscribed more than `count` times (after a Redis restart).
    pub async fn wait_resubscribed(&self, count: u64, timeout: Duration) {
        let mut subscriptions = self.subscriptions.clone();
        tokio::time::timeout(timeout, subscriptions.wait_for(|n| *n > count))
            .await
            .expect("the hub spy re-subscribes")
            .expect("spy task alive");
    }

    /// Everything seen so far.
    pub fn all(&self) -> Vec<Seen> {
        self.lock().clone()
    }

    /// What was seen that matches `predicate`.
    pub fn matching(&self, predicate: impl Fn(&Seen) -> bool) -> Vec<Seen> {
        self.lock()
            .iter()
            .filter(|s| predicate(s))
            .cloned()
            .collect()
    }

    /// Events of type `kind` on `channel` (a full pub/sub channel name).
    pub fn events(&self, channel: &str, kind: &str) -> Vec<Seen> {
        self.matching(|s| s.channel == channel && s.kind() == kind)
    }

    /// Waits until at least `count` payloads match `predicate`, and returns them all. Panics
    /// after `timeout`, saying what was seen.
    pub async fn wait_count(
        &self,
        what: &str,
        count: usize,
        timeout: Duration,
        predicate: impl Fn(&Seen) -> bool,
    ) -> Vec<Seen> {
        let mut version = self.version.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let found = self.matching(&predicate);
            if found.len() >= count {
                return found;
            }
            if tokio::time::timeout_at(deadline, version.changed())
                .await
                .is_err()
            {
                let seen: Vec<String> = self
                    .all()
                    .iter()
                    .map(|s| {
                        format!(
                            "  {} {}",
                            s.channel,
                            s.raw.chars().take(300).collect::<String>()
                        )
                    })
                    .collect();
                panic!(
                    "hub spy: timed out after {timeout:?} waiting for {count} x {what} (found {}); seen:\n{}",
                    found.len(),
                    seen.join("\n")
                );
            }
        }
    }

    /// Waits for the first payload matching `predicate`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&Seen) -> bool,
    ) -> Seen {
        self.wait_count(what, 1, timeout, predicate).await.remove(0)
    }
}

/// Publishes `payload` on `channel` with a fresh connection, as an agent's client would.
pub async fn publish(redis_url: &str, channel: &str, payload: &Value) {
    let client = redis::Client::open(redis_url).expect("redis url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test redis-server");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload.to_string())
        .query_async(&mut connection)
        .await
        .expect("PUBLISH");
}
