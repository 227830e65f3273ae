//! Durable outboxes against a private `redis-server`: order per destination, recovery of what a
//! stopped run left (with its progress), and dead letters with the reason.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use hub_bridge::bus::redis::RedisBus;
use hub_bridge::bus::Bus;
use hub_bridge_sdk::bridge::DeadLetter;
use hub_bridge_sdk::event::now_millis;
use hub_bridge_sdk::health::Health;
use hub_bridge_sdk::limits::{LimitsConfig, RateLimiter};
use hub_bridge_sdk::metrics::Metrics;
use hub_bridge_sdk::outbox::{Deliver, Outboxes, SendError};
use hub_bridge_sdk::{HubHandle, Keys, Op};
use hub_bridge_testkit::redis_server::RedisServer;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A message in parts, as a split platform message is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    name: String,
    parts: u32,
    sent: u32,
}

/// Sends one part per attempt; `fail_after` parts in total succeed, then every attempt is
/// transient (the platform went away).
struct Platform {
    sent: Mutex<Vec<String>>,
    fail_after: Option<usize>,
    permanent: bool,
    hub: HubHandle,
}

impl Deliver<Job> for Platform {
    fn deliver<'a>(
        &'a self,
        destination: &'a str,
        job: &'a mut Job,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            if self.permanent {
                return Err(SendError::Permanent("Forbidden: bot was kicked".into()));
            }
            while job.sent < job.parts {
                let mut sent = self.sent.lock().unwrap();
                if self.fail_after.is_some_and(|limit| sent.len() >= limit) {
                    return Err(SendError::Transient("502 Bad Gateway".into()));
                }
                sent.push(format!("{destination}/{}#{}", job.name, job.sent));
                job.sent += 1;
            }
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a self,
        destination: &'a str,
        job: Job,
        reason: String,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let letter = DeadLetter {
                destination: destination.to_owned(),
                event_type: "channel.message".into(),
                reason,
                agent_id: Some("agent-a".into()),
                channel_id: Some("C".into()),
                payload: serde_json::to_value(&job).unwrap(),
                at: now_millis(),
            };
            self.hub.dead_letter("test", letter).await.unwrap();
        })
    }
}

fn hub(server: &RedisServer) -> HubHandle {
    let metrics = Arc::new(Metrics::default());
    let bus = RedisBus::new(
        &server.url(),
        metrics.clone(),
        Health::default().component("redis"),
    )
    .unwrap();
    let store = bus.store();
    let keys = Keys::new("openclaw:");
    let limiter = RateLimiter::new(store.clone(), keys.clone(), LimitsConfig::default());
    HubHandle::new(store, keys, limiter, BTreeMap::new(), metrics)
}

fn platform(hub: &HubHandle, fail_after: Option<usize>, permanent: bool) -> Arc<Platform> {
    Arc::new(Platform {
        sent: Mutex::default(),
        fail_after,
        permanent,
        hub: hub.clone(),
    })
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn job(name: &str, parts: u32) -> Job {
    Job {
        name: name.into(),
        parts,
        sent: 0,
    }
}

#[tokio::test]
async fn a_stopped_run_leaves_its_backlog_and_progress_for_the_next() {
    let server = RedisServer::start();
    let hub = hub(&server);

    // First run: the platform takes 3 parts, then fails until the run stops.
    let first = platform(&hub, Some(3), false);
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let outboxes = Outboxes::durable(
        "test",
        first.clone(),
        hub.clone(),
        tasks.clone(),
        shutdown.clone(),
    );
    outboxes.push("chat-1", job("a", 2)).await;
    outboxes.push("chat-1", job("b", 3)).await;
    outboxes.push("chat-1", job("c", 1)).await;
    eventually("three parts sent", || first.sent.lock().unwrap().len() == 3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    assert_eq!(
        *first.sent.lock().unwrap(),
        ["chat-1/a#0", "chat-1/a#1", "chat-1/b#0"]
    );

    // Second run: what was left is recovered in order, and b resumes at its second part.
    let second = platform(&hub, None, false);
    let outboxes = Outboxes::durable(
        "test",
        second.clone(),
        hub.clone(),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    assert_eq!(outboxes.recover().await.unwrap(), 2);
    outboxes.push("chat-1", job("d", 1)).await;
    eventually("the backlog delivered", || {
        second.sent.lock().unwrap().len() == 4
    })
    .await;
    assert_eq!(
        *second.sent.lock().unwrap(),
        ["chat-1/b#1", "chat-1/b#2", "chat-1/c#0", "chat-1/d#0"]
    );

    // Delivered jobs leave the store.
    let key = hub.keys().outbox("test", "chat-1");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let left = hub
        .store()
        .one(Op::LRange {
            key,
            start: 0,
            stop: -1,
        })
        .await
        .unwrap()
        .into_list();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_permanent_error_is_dead_lettered_with_the_reason_and_the_agent_is_told() {
    let server = RedisServer::start();
    let hub = hub(&server);
    let mut notices = server.connection().await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("pubsub:agent:agent-a").await.unwrap();

    let forbidden = platform(&hub, None, true);
    let outboxes = Outboxes::durable(
        "test",
        forbidden,
        hub.clone(),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    outboxes.push("chat-9", job("x", 1)).await;

    use futures_util::StreamExt;
    let message = tokio::time::timeout(Duration::from_secs(5), pubsub.on_message().next())
        .await
        .expect("the agent is told")
        .unwrap();
    let notice: serde_json::Value =
        serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
    assert_eq!(notice["type"], "agent.notification");
    let content = notice["data"]["content"].as_str().unwrap();
    assert!(
        content.contains("chat-9") && content.contains("Forbidden: bot was kicked"),
        "{content}"
    );

    let letters: Vec<String> = redis::cmd("LRANGE")
        .arg(hub.keys().dead_letters("test"))
        .arg(0)
        .arg(-1)
        .query_async(&mut notices)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    let letter: serde_json::Value = serde_json::from_str(&letters[0]).unwrap();
    assert_eq!(letter["reason"], "Forbidden: bot was kicked");
    assert_eq!(letter["destination"], "chat-9");
    assert_eq!(letter["payload"]["name"], "x");
    let left: Vec<String> = redis::cmd("LRANGE")
        .arg(hub.keys().outbox("test", "chat-9"))
        .arg(0)
        .arg(-1)
        .query_async(&mut notices)
        .await
        .unwrap();
    assert!(left.is_empty(), "dead-lettered job still queued: {left:?}");
}

#[tokio::test]
async fn destinations_do_not_wait_for_each_other() {
    let server = RedisServer::start();
    let hub = hub(&server);
    // chat-slow never succeeds; chat-fast must still get everything.
    struct Split(Arc<Platform>);
    impl Deliver<Job> for Split {
        fn deliver<'a>(
            &'a self,
            destination: &'a str,
            job: &'a mut Job,
        ) -> BoxFuture<'a, Result<(), SendError>> {
            if destination == "chat-slow" {
                return Box::pin(async { Err(SendError::RetryAfter(Duration::from_secs(30))) });
            }
            self.0.deliver(destination, job)
        }
        fn dead_letter<'a>(
            &'a self,
            destination: &'a str,
            job: Job,
            reason: String,
        ) -> BoxFuture<'a, ()> {
            self.0.dead_letter(destination, job, reason)
        }
    }
    let fast = platform(&hub, None, false);
    let outboxes = Outboxes::durable(
        "test",
        Arc::new(Split(fast.clone())),
        hub.clone(),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    outboxes.push("chat-slow", job("s", 1)).await;
    for n in 0..5 {
        outboxes.push("chat-fast", job(&format!("f{n}"), 1)).await;
    }
    eventually("the fast chat's 5 messages", || {
        fast.sent.lock().unwrap().len() == 5
    })
    .await;
    let sent = fast.sent.lock().unwrap().clone();
    assert_eq!(
        sent,
        [
            "chat-fast/f0#0",
            "chat-fast/f1#0",
            "chat-fast/f2#0",
            "chat-fast/f3#0",
            "chat-fast/f4#0"
        ]
    );
    assert_eq!(outboxes.depth("chat-slow"), 1);
}

/// The real store, counting the round trips that read an outbox list.
struct CountingStore {
    inner: Arc<dyn hub_bridge_sdk::Store>,
    list_reads: std::sync::atomic::AtomicUsize,
}

impl hub_bridge_sdk::Store for CountingStore {
    fn exec(
        &self,
        ops: Vec<Op>,
    ) -> BoxFuture<'_, Result<Vec<hub_bridge_sdk::Reply>, hub_bridge_sdk::StoreError>> {
        if ops.iter().any(|op| matches!(op, Op::LRange { .. })) {
            self.list_reads
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.exec(ops)
    }
}

async fn index(hub: &HubHandle) -> Vec<String> {
    hub.store()
        .one(Op::SMembers {
            key: hub.keys().outboxes("test"),
        })
        .await
        .unwrap()
        .into_list()
}

#[tokio::test]
async fn a_destination_leaves_the_index_when_its_outbox_empties() {
    let server = RedisServer::start();
    let hub = hub(&server);
    let sent = platform(&hub, None, false);
    let outboxes = Outboxes::durable(
        "test",
        sent.clone(),
        hub.clone(),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    outboxes.push("chat-1", job("a", 1)).await;
    outboxes.push("chat-2", job("b", 1)).await;
    eventually("both delivered", || sent.sent.lock().unwrap().len() == 2).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = index(&hub).await;
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still indexed: {left:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn recovery_reads_every_destination_in_one_round_trip_and_prunes_empty_ones() {
    let server = RedisServer::start();
    let real = hub(&server);
    let store = real.store_arc();
    let keys = real.keys().clone();
    let mut seed = Vec::new();
    for n in 0..40 {
        let entry = serde_json::json!({"id": format!("i{n}"), "job": job(&format!("j{n}"), 1)});
        seed.push(Op::RPush {
            key: keys.outbox("test", &format!("chat-{n}")),
            value: entry.to_string(),
        });
        seed.push(Op::SAdd {
            key: keys.outboxes("test"),
            member: format!("chat-{n}"),
        });
    }
    // Destinations an earlier release indexed and never pruned.
    for n in 0..10 {
        seed.push(Op::SAdd {
            key: keys.outboxes("test"),
            member: format!("served-long-ago-{n}"),
        });
    }
    store.exec(seed).await.unwrap();

    let counting = Arc::new(CountingStore {
        inner: store.clone(),
        list_reads: Default::default(),
    });
    let limiter = RateLimiter::new(counting.clone(), keys.clone(), LimitsConfig::default());
    let hub = HubHandle::new(
        counting.clone(),
        keys,
        limiter,
        BTreeMap::new(),
        Arc::new(Metrics::default()),
    );
    let sent = platform(&hub, None, false);
    let outboxes = Outboxes::durable(
        "test",
        sent.clone(),
        hub.clone(),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    assert_eq!(outboxes.recover().await.unwrap(), 40);
    assert_eq!(
        counting
            .list_reads
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one round trip reads all 50 destinations"
    );
    let left = index(&hub).await;
    assert!(
        !left.iter().any(|d| d.starts_with("served-long-ago")),
        "{left:?}"
    );
    eventually("the 40 recovered jobs delivered", || {
        sent.sent.lock().unwrap().len() == 40
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !index(&hub).await.is_empty() {
        assert!(Instant::now() < deadline, "{:?}", index(&hub).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A platform that never gets a job through (rate-limited for long) and says whose each job is:
/// the agent is the job name up to its `-`.
struct Jammed {
    refused: Mutex<Vec<(String, String)>>,
}

impl Deliver<Job> for Jammed {
    fn deliver<'a>(
        &'a self,
        _destination: &'a str,
        _job: &'a mut Job,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async { Err(SendError::RetryAfter(Duration::from_secs(60))) })
    }

    fn dead_letter<'a>(
        &'a self,
        _destination: &'a str,
        job: Job,
        reason: String,
    ) -> BoxFuture<'a, ()> {
        self.refused.lock().unwrap().push((job.name, reason));
        Box::pin(async {})
    }

    fn agent(&self, job: &Job) -> Option<String> {
        job.name.split('-').next().map(str::to_owned)
    }
}

#[tokio::test]
async fn one_agent_cannot_take_more_than_its_share_of_a_destination() {
    use hub_bridge_sdk::outbox::AGENT_SHARE;

    let server = RedisServer::start();
    let hub = hub(&server);
    let jammed = Arc::new(Jammed {
        refused: Mutex::default(),
    });
    let outboxes = Outboxes::new(
        "test",
        jammed.clone(),
        hub.clone(),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    for n in 0..AGENT_SHARE + 5 {
        outboxes.push("chat-1", job(&format!("flood-{n}"), 1)).await;
    }
    assert_eq!(outboxes.depth("chat-1"), AGENT_SHARE);
    {
        let refused = jammed.refused.lock().unwrap();
        assert_eq!(refused.len(), 5, "{refused:?}");
        assert!(refused
            .iter()
            .all(|(name, reason)| name.starts_with("flood-")
                && reason.contains("already waiting for this destination")));
    }
    // Others' jobs still fit, and the flood is per destination.
    for n in 0..3 {
        outboxes.push("chat-1", job(&format!("other-{n}"), 1)).await;
    }
    outboxes.push("chat-2", job("flood-x", 1)).await;
    assert_eq!(outboxes.depth("chat-1"), AGENT_SHARE + 3);
    assert_eq!(outboxes.depth("chat-2"), 1);
    assert_eq!(jammed.refused.lock().unwrap().len(), 5);
    let refusals = hub
        .metrics()
        .outbox_share_refusals
        .get_or_create(&hub_bridge_sdk::metrics::BridgeLabels { bridge: "test" })
        .get();
    assert_eq!(refusals, 5);
}

/// A queued job that took in a newer one is rewritten where it stands, on both buses: a restart
/// then finds the newest text in the job's place in line.
#[tokio::test]
async fn a_list_entry_is_replaced_in_place_on_both_buses() {
    let server = RedisServer::start();
    let redis = hub(&server).store_arc();
    let embedded =
        hub_bridge::bus::embedded::EmbeddedBus::new(Arc::new(Metrics::default())).store();
    for store in [redis, embedded] {
        let key = "openclaw:bridge:outbox:test:42".to_owned();
        let push = |value: &str| Op::RPush {
            key: key.clone(),
            value: value.to_owned(),
        };
        store
            .exec(vec![push("send m1"), push("edit m1 v1"), push("send m2")])
            .await
            .unwrap();
        let replace = |old: &str, new: &str| Op::LReplace {
            key: key.clone(),
            old: old.to_owned(),
            new: new.to_owned(),
        };
        let replies = store
            .exec(vec![
                replace("edit m1 v1", "edit m1 v2"),
                replace("gone", "x"),
            ])
            .await
            .unwrap();
        assert_eq!(replies[0].as_int(), Some(1));
        assert_eq!(
            replies[1].as_int(),
            Some(0),
            "nothing to replace: nothing added"
        );
        let list = store
            .one(Op::LRange {
                key: key.clone(),
                start: 0,
                stop: -1,
            })
            .await
            .unwrap()
            .into_list();
        assert_eq!(list, ["send m1", "edit m1 v2", "send m2"]);
    }
}
