//! A Redis connection that goes silent (the network drops packets, no reset arrives) must not
//! stall the hub: the subscriber's PING watchdog and the command connection's timeout both
//! replace their connections. A TCP proxy in front of a private `redis-server` swallows the
//! traffic of the connections open at that moment, while new connections go through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hub_bridge::config::Config;
use hub_bridge_sdk::config::Secret;
use hub_bridge_testkit::redis_server::RedisServer;
use redis::AsyncCommands;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards to Redis; `silence_existing` makes every connection open now swallow its traffic.
struct SilencingProxy {
    port: u16,
    /// Connections accepted before this generation are silenced.
    silenced_below: Arc<AtomicU64>,
    generation: Arc<AtomicU64>,
}

impl SilencingProxy {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silenced_below = Arc::new(AtomicU64::new(0));
        let generation = Arc::new(AtomicU64::new(1));
        let (below, current) = (silenced_below.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let born = current.load(Ordering::SeqCst);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(client_read, server_write, born, below.clone()));
                tokio::spawn(pipe(server_read, client_write, born, below.clone()));
            }
        });
        Self {
            port,
            silenced_below,
            generation,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn silence_existing(&self) {
        let next = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.silenced_below.store(next, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    born: u64,
    silenced_below: Arc<AtomicU64>,
) {
    let mut buffer = vec![0; 16 * 1024];
    while let Ok(read) = from.read(&mut buffer).await {
        if read == 0 {
            return;
        }
        // A silenced connection stays open and reads on, but nothing arrives on the other side.
        if born < silenced_below.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

async fn readyz_status(addr: std::net::SocketAddr) -> u16 {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .map_or(0, |r| r.status().as_u16())
}

async fn wait_for_readyz(addr: std::net::SocketAddr, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    while readyz_status(addr).await != status {
        assert!(
            started.elapsed() < within,
            "/readyz never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_noticed_and_replaced() {
    let redis = RedisServer::start();
    let proxy = SilencingProxy::start(redis.port()).await;
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.redis.url = Some(Secret::new(proxy.url()));
    let running = hub_bridge::service::start(config).await.unwrap();
    let addr = running.http_addr;
    wait_for_readyz(addr, 200, Duration::from_secs(10)).await;

    // The test talks to Redis directly, not through the proxy.
    let mut direct = redis.connection().await;
    let processed = |agent: &'static str| {
        let mut direct = direct.clone();
        async move {
            let envelope = serde_json::json!({"event": {"type": "channel.presence", "channelId": "C",
                "presence": {"agentId": agent, "status": "online", "lastSeen": 1}}, "timestamp": 1, "channelId": "C"});
            let started = Instant::now();
            loop {
                let _: i64 = direct
                    .publish("pubsub:channel:C", envelope.to_string())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let exists: bool = direct
                    .exists(format!("openclaw:presence:C:{agent}"))
                    .await
                    .unwrap();
                if exists {
                    return started.elapsed();
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "{agent} never processed"
                );
            }
        }
    };
    processed("before-silence").await;

    proxy.silence_existing();
    let noticed = wait_for_readyz(addr, 503, Duration::from_secs(15)).await;
    let recovered = wait_for_readyz(addr, 200, Duration::from_secs(15)).await;
    let resumed = processed("after-silence").await;
    println!("silence noticed after {noticed:?}, subscription back {recovered:?} later, events processed {resumed:?} after that");
    let _: () = direct
        .del("openclaw:presence:C:after-silence")
        .await
        .unwrap();
    running.stop().await;
}

/// A Redis that refuses writes for now (out of memory with `noeviction`, as in issue 7's
/// reproduction) answers an error the callers must retry, not one they drop the write for; once it
/// takes writes again the same ops succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_refused_for_now_are_unavailable_not_bad_commands() {
    use hub_bridge::bus::redis::RedisBus;
    use hub_bridge::bus::Bus;
    use hub_bridge_sdk::health::Health;
    use hub_bridge_sdk::metrics::Metrics;
    use hub_bridge_sdk::{Op, StoreError};

    let server = RedisServer::start();
    let bus = RedisBus::new(
        &server.url(),
        Arc::new(Metrics::default()),
        Health::default().component("redis"),
    )
    .unwrap();
    let store = bus.store();
    let write = || Op::PublishOnce {
        claim_key: "openclaw:bridge:claim:1".into(),
        claim_value: "m".into(),
        ttl: Duration::from_secs(60),
        channel: "pubsub:channel:C".into(),
        payload: "{}".into(),
    };
    server.refuse_writes(true).await;
    let refused = store.exec(vec![write()]).await;
    assert!(
        matches!(&refused, Err(StoreError::Unavailable(reason)) if reason.contains("OOM")),
        "{refused:?}"
    );
    let each = store.exec_each(vec![write()]).await.unwrap();
    assert!(
        matches!(&each[..], [Err(StoreError::Unavailable(_))]),
        "{each:?}"
    );
    server.refuse_writes(false).await;
    let replies = store.exec(vec![write()]).await.unwrap();
    assert_eq!(replies, [hub_bridge_sdk::Reply::Int(1)]);
}
