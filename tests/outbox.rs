//! Durable outboxes against a private `redis-server`: order per destination, recovery of what a
//! stopped run left (with its progress), and dead letters with the reason.

mod support;

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
use serde::{Deserialize, Serialize};
use support::redis_server::RedisServer;
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
    let key = hub.keys().bridge("outbox:test:chat-1");
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
        .arg(hub.keys().bridge("deadletter:test"))
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
        .arg(hub.keys().bridge("outbox:test:chat-9"))
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
