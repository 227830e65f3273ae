//! Fenced leases, against a private `redis-server` and on the embedded bus: every acquisition of
//! a bridge's lease gets a larger fencing token, renewal keeps it, and an instance whose token is
//! stale can neither renew nor release the lease.

use std::sync::Arc;
use std::time::Duration;

use hub_bridge::bus::embedded::EmbeddedBus;
use hub_bridge::bus::redis::RedisBus;
use hub_bridge::bus::Bus;
use hub_bridge::supervisor::Lease;
use hub_bridge_sdk::health::Health;
use hub_bridge_sdk::metrics::Metrics;
use hub_bridge_sdk::{Keys, Op, Reply, Store};
use hub_bridge_testkit::redis_server::RedisServer;

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
