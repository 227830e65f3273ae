//! Fenced leases, against a private `redis-server` and on the embedded bus: every acquisition of
//! a bridge's lease gets a larger fencing token, renewal keeps it, and an instance whose token is
//! stale can neither renew nor release the lease; its outbox workers take no job (nothing is
//! sent), finish none, and stop, while the jobs stay in the durable outbox for the new holder; it
//! queues no new job and cannot move the handover mark.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;

use hub_bridge::bus::embedded::EmbeddedBus;
use hub_bridge::bus::redis::RedisBus;
use hub_bridge::bus::Bus;
use hub_bridge::supervisor::Lease;
use hub_bridge_sdk::health::Health;
use hub_bridge_sdk::limits::{LimitsConfig, RateLimiter};
use hub_bridge_sdk::metrics::Metrics;
use hub_bridge_sdk::outbox::{Deliver, Outboxes, SendError};
use hub_bridge_sdk::{Fence, HubHandle, Keys, Op, Reply, Store};
use hub_bridge_testkit::redis_server::RedisServer;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Long enough for a test's steps; the expiry test uses its own.
const TTL: Duration = Duration::from_secs(30);

fn redis_store(server: &RedisServer) -> Arc<dyn Store> {
    RedisBus::new(
        &server.url(),
        Arc::new(Metrics::default()),
        Health::default().component("redis"),
    )
    .unwrap()
    .store()
}

fn embedded_store() -> Arc<dyn Store> {
    EmbeddedBus::new(Arc::new(Metrics::default())).store()
}

async fn lease_value(store: &dyn Store) -> Reply {
    store
        .one(Op::Get {
            key: "openclaw:bridge:lease:test".to_owned(),
        })
        .await
        .unwrap()
}

/// Every acquisition, after a release, an expiry, or by the holder for its next run, gets a
/// larger token; a renewal keeps it; a stale token renews and releases nothing.
async fn the_fence_grows_with_every_acquisition(store: Arc<dyn Store>) {
    let keys = Keys::new("openclaw:");
    let a = Lease::new(store.as_ref(), &keys, "test", "instance-a", TTL);
    let b = Lease::new(store.as_ref(), &keys, "test", "instance-b", TTL);

    let first = a.acquire().await.expect("a free lease");
    assert_eq!(
        lease_value(store.as_ref()).await,
        Reply::Text(format!("instance-a:{}", first.token()))
    );
    assert!(b.acquire().await.is_none(), "a holds it");
    assert!(a.renew(&first).await.unwrap());
    assert_eq!(
        lease_value(store.as_ref()).await,
        Reply::Text(first.holder()),
        "a renewal keeps the token"
    );

    // The holder's next run (after a bridge failure) is an acquisition of its own.
    let second = a.acquire().await.expect("a holds it already");
    assert!(second.token() > first.token(), "{second:?} after {first:?}");
    assert!(!a.renew(&first).await.unwrap(), "the earlier run's fence");

    a.release(&first).await;
    assert_eq!(
        lease_value(store.as_ref()).await,
        Reply::Text(second.holder()),
        "a stale fence releases nothing"
    );
    a.release(&second).await;
    let third = b.acquire().await.expect("released");
    assert!(third.token() > second.token(), "{third:?} after {second:?}");

    // An expired lease: the next holder's token is larger again.
    let short = Duration::from_millis(300);
    let b_short = Lease::new(store.as_ref(), &keys, "test", "instance-b", short);
    let fourth = b_short.acquire().await.expect("b holds it");
    assert!(a.acquire().await.is_none(), "b holds it");
    tokio::time::sleep(short * 2).await;
    let fifth = a.acquire().await.expect("expired");
    assert!(fifth.token() > fourth.token(), "{fifth:?} after {fourth:?}");
    assert!(
        !b_short.renew(&fourth).await.unwrap(),
        "an expired holder cannot renew"
    );
}

#[tokio::test]
async fn the_fence_grows_with_every_acquisition_on_redis() {
    let server = RedisServer::start();
    the_fence_grows_with_every_acquisition(redis_store(&server)).await;
}

#[tokio::test]
async fn the_fence_grows_with_every_acquisition_on_the_embedded_bus() {
    the_fence_grows_with_every_acquisition(embedded_store()).await;
}

/// A platform that records what it is sent; with a gate, each send first waits for a permit.
#[derive(Default)]
struct Platform {
    sent: Mutex<Vec<String>>,
    gate: Option<Semaphore>,
    /// Notified when a send has started.
    started: Notify,
}

impl Platform {
    fn gated() -> Arc<Self> {
        Arc::new(Self {
            gate: Some(Semaphore::new(0)),
            ..Self::default()
        })
    }

    fn sent(&self) -> Vec<String> {
        self.sent.lock().unwrap().clone()
    }
}

impl Deliver<String> for Platform {
    fn deliver<'a>(
        &'a self,
        destination: &'a str,
        job: &'a mut String,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            self.started.notify_one();
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            self.sent
                .lock()
                .unwrap()
                .push(format!("{destination}/{job}"));
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a self,
        destination: &'a str,
        job: String,
        reason: String,
    ) -> BoxFuture<'a, ()> {
        panic!("{destination}/{job} dead-lettered: {reason}")
    }
}

fn hub(store: &Arc<dyn Store>, fence: Option<Fence>) -> HubHandle {
    let keys = Keys::new("openclaw:");
    let limiter = RateLimiter::new(store.clone(), keys.clone(), LimitsConfig::default());
    let mut hub = HubHandle::new(
        store.clone(),
        keys,
        limiter,
        BTreeMap::new(),
        Arc::new(Metrics::default()),
    );
    hub.set_fence(fence);
    hub
}

/// The outboxes of a run holding `fence`, and the tasks their workers run on.
fn outboxes(
    store: &Arc<dyn Store>,
    fence: &Fence,
    platform: &Arc<Platform>,
) -> (Outboxes<String>, TaskTracker) {
    let tasks = TaskTracker::new();
    // Never cancelled: the workers must stop on their own once the fence is stale.
    let shutdown = CancellationToken::new();
    let outboxes = Outboxes::durable(
        "test",
        platform.clone(),
        hub(store, Some(fence.clone())),
        tasks.clone(),
        shutdown,
    );
    (outboxes, tasks)
}

async fn stored(store: &dyn Store, destination: &str) -> Vec<String> {
    let entries = store
        .one(Op::LRange {
            key: format!("openclaw:bridge:outbox:test:{destination}"),
            start: 0,
            stop: -1,
        })
        .await
        .unwrap()
        .into_list();
    entries
        .iter()
        .map(|entry| {
            let entry: serde_json::Value = serde_json::from_str(entry).unwrap();
            entry["job"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Waits for every worker of `tasks` to have stopped on its own.
async fn stopped(tasks: TaskTracker, platform: &Platform) {
    tasks.close();
    let stopped = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    assert!(
        stopped.is_ok(),
        "the workers of a stale fence did not stop; they sent {:?}",
        platform.sent()
    );
}

async fn eventually_sent(platform: &Platform, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while platform.sent().len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sent only {:?}",
            platform.sent()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An instance paused past its lease's TTL carries on with its outboxes: they send nothing, and
/// queue nothing in the store either. The new holder relays those events from the ones it kept
/// while standing by (`tests/handover.rs`), so a job queued here would show them twice.
async fn a_worker_whose_fence_is_stale_sends_nothing(store: Arc<dyn Store>) {
    let keys = Keys::new("openclaw:");
    let ttl = Duration::from_millis(300);
    let old = Lease::new(store.as_ref(), &keys, "test", "instance-a", ttl);
    let stale = old.acquire().await.expect("a free lease");
    tokio::time::sleep(ttl * 2).await;
    let new = Lease::new(store.as_ref(), &keys, "test", "instance-b", TTL);
    let current = new.acquire().await.expect("expired");

    let paused = Arc::new(Platform::default());
    let (outboxes_a, tasks_a) = outboxes(&store, &stale, &paused);
    outboxes_a.push("chat-1", "m1".to_owned()).await;
    outboxes_a.push("chat-2", "m2".to_owned()).await;
    outboxes_a.push("chat-1", "m3".to_owned()).await;
    stopped(tasks_a, &paused).await;
    assert_eq!(paused.sent(), Vec::<String>::new());
    assert!(stored(store.as_ref(), "chat-1").await.is_empty());
    assert!(stored(store.as_ref(), "chat-2").await.is_empty());

    let holder = Arc::new(Platform::default());
    let (outboxes_b, _tasks_b) = outboxes(&store, &current, &holder);
    assert_eq!(outboxes_b.recover().await.unwrap(), 0);
    assert!(paused.sent().is_empty());
}

/// A send already under way when the lease is lost completes (the platform knows no token), but
/// its finish is refused: the job stays for the new holder, and the job behind it is not taken.
async fn a_job_finished_after_the_lease_was_lost_stays_for_the_new_holder(store: Arc<dyn Store>) {
    let keys = Keys::new("openclaw:");
    let a = Lease::new(store.as_ref(), &keys, "test", "instance-a", TTL);
    let fence_a = a.acquire().await.expect("a free lease");
    let platform = Platform::gated();
    let (outboxes_a, tasks_a) = outboxes(&store, &fence_a, &platform);
    outboxes_a.push("chat-1", "m1".to_owned()).await;
    outboxes_a.push("chat-1", "m2".to_owned()).await;
    platform.started.notified().await;

    // The lease goes to another instance while m1 is on the wire.
    a.release(&fence_a).await;
    let b = Lease::new(store.as_ref(), &keys, "test", "instance-b", TTL);
    let fence_b = b.acquire().await.expect("released");
    platform.gate.as_ref().unwrap().add_permits(10);
    stopped(tasks_a, &platform).await;
    assert_eq!(platform.sent(), ["chat-1/m1"]);
    assert_eq!(stored(store.as_ref(), "chat-1").await, ["m1", "m2"]);

    let holder = Arc::new(Platform::default());
    let (outboxes_b, _tasks_b) = outboxes(&store, &fence_b, &holder);
    assert_eq!(outboxes_b.recover().await.unwrap(), 2);
    eventually_sent(&holder, 2).await;
    assert_eq!(holder.sent(), ["chat-1/m1", "chat-1/m2"]);
}

#[tokio::test]
async fn a_worker_whose_fence_is_stale_sends_nothing_on_redis() {
    let server = RedisServer::start();
    a_worker_whose_fence_is_stale_sends_nothing(redis_store(&server)).await;
}

#[tokio::test]
async fn a_worker_whose_fence_is_stale_sends_nothing_on_the_embedded_bus() {
    a_worker_whose_fence_is_stale_sends_nothing(embedded_store()).await;
}

#[tokio::test]
async fn a_job_finished_after_the_lease_was_lost_stays_for_the_new_holder_on_redis() {
    let server = RedisServer::start();
    a_job_finished_after_the_lease_was_lost_stays_for_the_new_holder(redis_store(&server)).await;
}

#[tokio::test]
async fn a_job_finished_after_the_lease_was_lost_stays_for_the_new_holder_on_the_embedded_bus() {
    a_job_finished_after_the_lease_was_lost_stays_for_the_new_holder(embedded_store()).await;
}

/// The handover mark moves only for the lease's holder: a run that lost the lease cannot make the
/// next holder skip events it never handed on.
async fn the_handover_mark_moves_only_for_the_lease_holder(store: Arc<dyn Store>) {
    let keys = Keys::new("openclaw:");
    let a = Lease::new(store.as_ref(), &keys, "test", "instance-a", TTL);
    let fence_a = a.acquire().await.expect("a free lease");
    let mark = |fence: &Fence, value: &str| Op::SetFenced {
        fence: Some(fence.clone()),
        key: keys.handed("test"),
        value: value.to_owned(),
    };
    assert_eq!(store.one(mark(&fence_a, "a")).await.unwrap(), Reply::Int(1));
    a.release(&fence_a).await;
    let b = Lease::new(store.as_ref(), &keys, "test", "instance-b", TTL);
    let fence_b = b.acquire().await.expect("released");
    assert_eq!(
        store.one(mark(&fence_a, "stale")).await.unwrap(),
        Reply::Int(0)
    );
    let read = Op::Get {
        key: keys.handed("test"),
    };
    assert_eq!(
        store.one(read.clone()).await.unwrap(),
        Reply::Text("a".to_owned())
    );
    assert_eq!(store.one(mark(&fence_b, "b")).await.unwrap(), Reply::Int(1));
    assert_eq!(store.one(read).await.unwrap(), Reply::Text("b".to_owned()));
}

#[tokio::test]
async fn the_handover_mark_moves_only_for_the_lease_holder_on_redis() {
    let server = RedisServer::start();
    the_handover_mark_moves_only_for_the_lease_holder(redis_store(&server)).await;
}

#[tokio::test]
async fn the_handover_mark_moves_only_for_the_lease_holder_on_the_embedded_bus() {
    the_handover_mark_moves_only_for_the_lease_holder(embedded_store()).await;
}
