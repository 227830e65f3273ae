//! Redis Sentinel (SPEC section 6, "Redis high availability"): the service started with
//! `redis.sentinels` finds the primary, and when the primary is killed it follows the failover
//! without a restart: `/readyz` goes not ready naming the store and comes back, hub events
//! published on the new primary reach the bridges, a durable write made before the failover is
//! still there, and durable writes wait for `redis.wait_replicas` (a shortfall counted and shown
//! as degraded, the service going on).
//!
//! `hub-bridge check` reports the Sentinels' view: the primary, the replicas, the quorum.
//!
//! The set-up is real and on loopback, started by the test: a primary `redis-server`, one replica
//! (`--replicaof`) and three `redis-server --sentinel` processes with a quorum of 2.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use hub_bridge::config::Config;
use hub_bridge::service::{start_with, Running};
use hub_bridge_sdk::config::Secret;
use hub_bridge_sdk::{Bridge, BridgeContext, BridgeError, Op, Reply};
use hub_bridge_testkit::redis_server::RedisServer;
use serde_json::Value;

const MASTER: &str = "hub";
const DURABLE_KEY: &str = "openclaw:test:sentinel:durable";

/// A bridge that records the events the hub loop hands it (their debug form, which holds the
/// message id): the stand-in for a platform.
#[derive(Clone, Default)]
struct Probe {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Probe {
    fn saw(&self, id: &str) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().any(|event| event.contains(id))
    }
}

impl Bridge for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn check(&self) -> BoxFuture<'_, Result<String, BridgeError>> {
        Box::pin(async { Ok("probe".to_owned()) })
    }

    fn run<'a>(&'a self, ctx: &'a mut BridgeContext) -> BoxFuture<'a, Result<(), BridgeError>> {
        Box::pin(async move {
            ctx.status.ready("probing");
            loop {
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    Some(delivery) = ctx.deliveries.recv() => {
                        let event = format!("{:?}", delivery.inbound.event);
                        self.seen.lock().unwrap_or_else(|e| e.into_inner()).push(event);
                    }
                }
            }
        })
    }
}

async fn readyz(running: &Running) -> (u16, Value) {
    let url = format!("http://{}/readyz", running.http_addr);
    let response = reqwest::get(url).await.expect("readyz answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("readyz is JSON"))
}

fn detail<'a>(readyz: &'a Value, component: &str) -> &'a str {
    readyz["components"][component]["detail"]
        .as_str()
        .unwrap_or_default()
}

/// Publishes an agent's message with `id` on `server` every 200 ms until the probe saw it: the
/// subscription may still be settling, and pub/sub keeps nothing for a subscriber not yet there.
async fn publish_until_seen(server: &RedisServer, probe: &Probe, id: &str) {
    let event = format!(
        r#"{{"event":{{"type":"channel.message","channelId":"C","message":{{"id":"{id}","content":"hello","senderId":"agent-a","timestamp":1708554000000}}}},"timestamp":1708554000000,"channelId":"C"}}"#
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut connection = server.connection().await;
    while !probe.saw(id) {
        assert!(Instant::now() < deadline, "{id} never reached the probe");
        let _: i64 = redis::cmd("PUBLISH")
            .arg("pubsub:channel:C")
            .arg(&event)
            .query_async(&mut connection)
            .await
            .expect("PUBLISH");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn durable_write(running: &Running, value: &str) {
    let set = Op::Set {
        key: DURABLE_KEY.to_owned(),
        value: value.to_owned(),
        ttl: None,
        only_if_absent: false,
    };
    let replies = running.bus.store().exec(vec![set]).await;
    assert!(
        matches!(replies.as_deref(), Ok([Reply::Ok])),
        "durable write: {replies:?}"
    );
}

/// A primary, its replica and three Sentinels (quorum 2) that know each other and the replica.
async fn sentinel_set_up() -> (RedisServer, RedisServer, Vec<RedisServer>) {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let sentinels: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start_sentinel(MASTER, &primary, 2))
        .collect();
    for sentinel in &sentinels {
        sentinel.wait_for_sentinel_view(MASTER, 2, 1).await;
    }
    (primary, replica, sentinels)
}

/// The service's config on `sentinels`, waiting for one replica.
fn sentinel_config(sentinels: &[RedisServer]) -> Config {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse().expect("address");
    config.redis.sentinels = Some(sentinels.iter().map(|s| Secret::new(s.url())).collect());
    config.redis.master_name = Some(MASTER.to_owned());
    config.redis.wait_replicas = 1;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_the_sentinel_view() {
    let (primary, replica, sentinels) = sentinel_set_up().await;
    let config = sentinel_config(&sentinels);
    let report = hub_bridge::check::run(&config, std::path::Path::new("hub.toml")).await;
    let line = |name: &str| {
        report
            .lines
            .iter()
            .find(|line| line.name == name)
            .unwrap_or_else(|| panic!("no `{name}` line in:\n{report}"))
    };
    let primary_line = line("sentinel primary");
    assert!(primary_line.ok, "{report}");
    assert!(
        primary_line
            .detail
            .contains(&format!("127.0.0.1:{}", primary.port())),
        "{report}"
    );
    let replicas = line("sentinel replicas");
    assert!(replicas.ok, "{report}");
    assert!(
        replicas
            .detail
            .contains(&format!("127.0.0.1:{}", replica.port())),
        "{report}"
    );
    let quorum = line("sentinel quorum");
    assert!(quorum.ok && quorum.detail.starts_with("OK"), "{report}");
    // Then Redis itself is checked on the primary the Sentinels named.
    assert!(report.passed(), "{report}");
    assert!(line("redis pub/sub").ok, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_follows_a_sentinel_failover() {
    let (mut primary, replica, sentinels) = sentinel_set_up().await;
    let config = sentinel_config(&sentinels);
    let probe = Probe::default();
    let running = start_with(config, vec![Box::new(probe.clone())])
        .await
        .expect("service starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while readyz(&running).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "never ready: {:?}",
            readyz(&running).await
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (_, ready) = readyz(&running).await;
    let primary_address = format!("127.0.0.1:{}", primary.port());
    assert!(
        detail(&ready, "redis").contains(&primary_address),
        "subscribed on the primary Sentinel named: {ready}"
    );

    // Before the failover: a durable write acknowledged by the replica, an event relayed.
    durable_write(&running, "before").await;
    let (_, ready) = readyz(&running).await;
    assert!(
        detail(&ready, "redis_replicas").starts_with("1 of 1"),
        "{ready}"
    );
    publish_until_seen(&primary, &probe, "m-before").await;

    primary.kill();
    let killed = Instant::now();
    // `/readyz` goes not ready (the store, with its reason) and comes back without a restart.
    let mut not_ready_reason = None;
    loop {
        let (status, body) = readyz(&running).await;
        if status != 200 && not_ready_reason.is_none() {
            assert_eq!(body["components"]["redis"]["ready"], false, "{body}");
            not_ready_reason = Some(detail(&body, "redis").to_owned());
        }
        if status == 200 && not_ready_reason.is_some() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "not back after the failover (went not ready: {not_ready_reason:?}): {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reason = not_ready_reason.unwrap_or_default();
    assert!(!reason.is_empty(), "not ready without a reason");
    assert!(replica.is_primary().await, "the replica was promoted");
    let (_, ready) = readyz(&running).await;
    let new_primary = format!("127.0.0.1:{}", replica.port());
    assert!(
        detail(&ready, "redis").contains(&new_primary),
        "re-subscribed on the new primary: {ready}"
    );

    // After: events published on the new primary reach the probe, the durable write survived.
    publish_until_seen(&replica, &probe, "m-after").await;
    let kept: Option<String> = redis::cmd("GET")
        .arg(DURABLE_KEY)
        .query_async(&mut replica.connection().await)
        .await
        .expect("GET");
    assert_eq!(kept.as_deref(), Some("before"));

    // No replica is left: a durable write stands on the primary, counted and shown as degraded,
    // and the service stays ready.
    let shortfalls = running.metrics.redis_wait_shortfalls.get();
    durable_write(&running, "after").await;
    assert!(running.metrics.redis_wait_shortfalls.get() > shortfalls);
    let (status, ready) = readyz(&running).await;
    assert_eq!(status, 200, "{ready}");
    assert!(
        detail(&ready, "redis_replicas").starts_with("degraded"),
        "{ready}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "failover took {:?}",
        killed.elapsed()
    );
    running.stop().await;
}
