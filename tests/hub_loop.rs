//! The hub loop's state keeping, rate limits, routing and outage recovery, run twice: against a
//! private `redis-server` and on the embedded in-process bus (same suite, same assertions).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use hub_bridge::bus::embedded::EmbeddedBus;
use hub_bridge::bus::redis::RedisBus;
use hub_bridge::bus::{Bus, BusMessage};
use hub_bridge::config::Config;
use hub_bridge::handover::Handover;
use hub_bridge::hub::state::StateSettings;
use hub_bridge::hub::HubLoop;
use hub_bridge::service::{start_with, Running};
use hub_bridge_sdk::config::Secret;
use hub_bridge_sdk::handover::EventId;
use hub_bridge_sdk::limits::{Action, Decision, LimitsConfig, RateLimiter};
use hub_bridge_sdk::{Bridge, BridgeContext, BridgeError, Keys, Op, Reply, Store};
use hub_bridge_testkit::redis_server::RedisServer;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const WAIT: Duration = Duration::from_secs(5);

/// A bridge that records what the hub loop hands it; the hub-level stand-in for a platform.
#[derive(Clone, Default)]
struct RecordingBridge {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Bridge for RecordingBridge {
    fn name(&self) -> &'static str {
        "recorder"
    }

    fn check(&self) -> BoxFuture<'_, Result<String, BridgeError>> {
        Box::pin(async { Ok("recorder".to_owned()) })
    }

    fn run<'a>(&'a self, ctx: &'a mut BridgeContext) -> BoxFuture<'a, Result<(), BridgeError>> {
        Box::pin(async move {
            ctx.status.ready("recording");
            loop {
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    Some(delivery) = ctx.deliveries.recv() => {
                        let name = delivery.inbound.event.type_name().to_owned();
                        self.seen.lock().unwrap().push(name);
                    }
                }
            }
        })
    }
}

struct Hub {
    running: Running,
    store: Arc<dyn Store>,
    keys: Keys,
    events: mpsc::Receiver<BusMessage>,
    recorder: RecordingBridge,
    redis: Option<RedisServer>,
    _tasks: TaskTracker,
    stop_events: CancellationToken,
}

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Redis,
    Embedded,
}

impl Hub {
    async fn start(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        let redis = (backend == Backend::Redis).then(RedisServer::start);
        let mut config = Config::default();
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        config.redis.url = redis.as_ref().map(|server| Secret::new(server.url()));
        tweak(&mut config);
        let recorder = RecordingBridge::default();
        let running = start_with(config, vec![Box::new(recorder.clone())])
            .await
            .expect("service starts");
        let tasks = TaskTracker::new();
        let stop_events = CancellationToken::new();
        let events = running.bus.subscribe(1024, &tasks, stop_events.clone());
        let mut hub = Self {
            store: running.bus.store(),
            keys: Keys::new("openclaw:"),
            running,
            events,
            recorder,
            redis,
            _tasks: tasks,
            stop_events,
        };
        hub.wait_ready().await;
        hub.sync().await;
        hub
    }

    async fn readyz(&self) -> (u16, Value) {
        let url = format!("http://{}/readyz", self.running.http_addr);
        let response = reqwest::get(url).await.expect("readyz answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("readyz is JSON"))
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.readyz().await.0 != 200 {
            assert!(
                Instant::now() < deadline,
                "never ready: {:?}",
                self.readyz().await
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the test's own subscription sees what is published.
    async fn sync(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let probe = format!(r#"{{"type":"test.probe","n":"{}"}}"#, uuid::Uuid::new_v4());
            self.publish("pubsub:global", &probe).await;
            let until = Instant::now() + Duration::from_millis(200);
            while let Ok(Some(message)) =
                tokio::time::timeout_at(until.into(), self.events.recv()).await
            {
                if message.payload == probe.as_bytes() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "test subscription never synced");
        }
    }

    async fn publish(&self, channel: &str, payload: &str) {
        self.store
            .publish(channel.to_owned(), payload.to_owned())
            .await
            .expect("publish");
    }

    async fn publish_event(&self, event: Value) {
        let channel_id = event["channelId"].as_str().unwrap_or("C").to_owned();
        let envelope = json!({"event": event, "timestamp": 1, "channelId": channel_id});
        self.publish(
            &format!("pubsub:channel:{channel_id}"),
            &envelope.to_string(),
        )
        .await;
    }

    async fn op(&self, op: Op) -> Reply {
        self.store.one(op).await.expect("store op")
    }

    /// Polls `probe` until it returns `Some`, or fails the test with `what`.
    async fn eventually<T>(&self, what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The next published event whose JSON matches, skipping others.
    async fn next_event(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let message = tokio::time::timeout_at(deadline.into(), self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .expect("subscription open");
            let Ok(value) = serde_json::from_slice::<Value>(&message.payload) else {
                continue;
            };
            if matches(&value) {
                return value;
            }
        }
    }

    /// Whether an event matching `matches` arrives within `window`.
    async fn any_event_within(
        &mut self,
        window: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> bool {
        let deadline = Instant::now() + window;
        while let Ok(Some(message)) =
            tokio::time::timeout_at(deadline.into(), self.events.recv()).await
        {
            if serde_json::from_slice::<Value>(&message.payload).is_ok_and(|value| matches(&value))
            {
                return true;
            }
        }
        false
    }

    async fn stop(self) {
        self.stop_events.cancel();
        self.running.stop().await;
    }
}

fn presence_event(agent: &str, status: &str) -> Value {
    json!({"type": "channel.presence", "channelId": "C",
           "presence": {"agentId": agent, "status": status, "avatar": "🤖", "lastSeen": 1708554000000i64}})
}

fn message_event(sender: &str, id: &str) -> Value {
    json!({"type": "channel.message", "channelId": "C",
           "message": {"id": id, "content": "hi", "senderId": sender, "timestamp": 1708554000000i64}})
}

fn is_presence(value: &Value, agent: &str, status: &str) -> bool {
    value["event"]["type"] == "channel.presence"
        && value["event"]["presence"]["agentId"] == agent
        && value["event"]["presence"]["status"] == status
}

async fn presence_event_writes_the_hash_with_a_ttl(backend: Backend) {
    let hub = Hub::start(backend, |_| {}).await;
    hub.publish_event(presence_event("backend-architect", "online"))
        .await;
    let key = hub.keys.presence("C", "backend-architect");
    let fields = hub
        .eventually("the presence hash", async || {
            let pairs = hub.op(Op::HGetAll { key: key.clone() }).await.into_pairs();
            (!pairs.is_empty()).then_some(pairs)
        })
        .await;
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("agentId"), Some("backend-architect"));
    assert_eq!(get("status"), Some("online"));
    assert_eq!(get("avatar"), Some("🤖"));
    assert_eq!(get("lastSeen"), Some("1708554000000"));
    let ttl = hub
        .op(Op::TtlMillis { key: key.clone() })
        .await
        .as_int()
        .unwrap();
    assert!(ttl > 0 && ttl <= 300_000, "ttl {ttl}");

    hub.publish_event(presence_event("backend-architect", "offline"))
        .await;
    hub.eventually("the presence hash to be deleted", async || {
        (hub.op(Op::Exists { key: key.clone() }).await == Reply::Int(1)).then_none()
    })
    .await;
    hub.stop().await;
}

trait ThenNone {
    fn then_none(self) -> Option<()>;
}

impl ThenNone for bool {
    /// `Some(())` when false: "wait until this is no longer true".
    fn then_none(self) -> Option<()> {
        (!self).then_some(())
    }
}

async fn a_first_message_publishes_the_online_transition_and_join_once(backend: Backend) {
    let mut hub = Hub::start(backend, |_| {}).await;
    let person = "external:telegram:123";
    hub.publish_event(message_event(person, "m1")).await;
    let transition = hub
        .next_event("the online transition", |v| {
            is_presence(v, person, "online")
        })
        .await;
    assert_eq!(transition["channelId"], "C");
    hub.next_event("the member join", |v| {
        v["event"]["type"] == "channel.member.join"
    })
    .await;
    hub.publish_event(message_event(person, "m2")).await;
    let key = hub.keys.members("C");
    let members = hub.op(Op::SMembers { key }).await.into_list();
    assert_eq!(members, vec![person.to_owned()]);
    let again = hub
        .any_event_within(Duration::from_millis(400), |v| {
            is_presence(v, person, "online") || v["event"]["type"] == "channel.member.join"
        })
        .await;
    assert!(!again, "transition or join published twice");
    hub.stop().await;
}

async fn a_first_message_publishes_a_member_join(backend: Backend) {
    let mut hub = Hub::start(backend, |_| {}).await;
    let person = "external:discord:456";
    hub.publish_event(message_event(person, "m1")).await;
    let join = hub
        .next_event("the member join", |v| {
            v["event"]["type"] == "channel.member.join"
        })
        .await;
    assert_eq!(join["event"]["member"]["agentId"], person);
    assert_eq!(join["event"]["member"]["role"], "member");
    hub.stop().await;
}

async fn an_unrefreshed_presence_goes_offline(backend: Backend) {
    let mut hub = Hub::start(backend, |config| config.hub.presence_ttl_secs = 1).await;
    hub.publish_event(presence_event("tester", "online")).await;
    let started = Instant::now();
    let offline = hub
        .next_event("the offline transition", |v| {
            is_presence(v, "tester", "offline")
        })
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "offline too early"
    );
    assert_eq!(offline["event"]["channelId"], "C");
    let key = hub.keys.presence("C", "tester");
    assert_eq!(hub.op(Op::Exists { key }).await, Reply::Int(0));
    hub.stop().await;
}

async fn typing_is_added_and_removed(backend: Backend) {
    let hub = Hub::start(backend, |_| {}).await;
    let key = hub.keys.typing("C");
    let typers = async || {
        let now = hub_bridge_sdk::event::now_millis();
        let range = Op::ZRangeByScore {
            key: key.clone(),
            min: now - 10_000,
            max: now,
        };
        hub.op(range).await.into_list()
    };
    hub.publish_event(
        json!({"type": "channel.typing", "channelId": "C", "agentId": "a", "started": true}),
    )
    .await;
    hub.eventually("a typer", async || (typers().await == ["a"]).then_some(()))
        .await;
    let ttl = hub
        .op(Op::TtlMillis { key: key.clone() })
        .await
        .as_int()
        .unwrap();
    assert!(ttl > 0 && ttl <= 10_000, "typing ttl {ttl}");
    // The TypeScript client's shape stops it.
    hub.publish(
        "pubsub:channel:C",
        r#"{"type":"typing.update","data":{"agentId":"a","channelId":"C","startedAt":1},"isTyping":false}"#,
    )
    .await;
    hub.eventually("no typer", async || typers().await.is_empty().then_some(()))
        .await;
    hub.stop().await;
}

async fn members_join_and_leave(backend: Backend) {
    let hub = Hub::start(backend, |_| {}).await;
    let key = hub.keys.members("C");
    hub.publish_event(json!({"type": "channel.member.join", "channelId": "C",
        "member": {"agentId": "a", "joinedAt": 1, "role": "owner"}}))
        .await;
    hub.eventually("a member", async || {
        (hub.op(Op::SMembers { key: key.clone() }).await.into_list() == ["a"]).then_some(())
    })
    .await;
    hub.publish_event(json!({"type": "channel.member.leave", "channelId": "C", "agentId": "a"}))
        .await;
    hub.eventually("no member", async || {
        hub.op(Op::SMembers { key: key.clone() })
            .await
            .into_list()
            .is_empty()
            .then_some(())
    })
    .await;
    hub.stop().await;
}

async fn channel_updates_merge(backend: Backend) {
    let hub = Hub::start(backend, |_| {}).await;
    let key = hub.keys.channel("C");
    hub.publish_event(
        json!({"type": "channel.update", "channelId": "C", "channel": {"name": "#eng"}}),
    )
    .await;
    hub.publish_event(json!({"type": "channel.update", "channelId": "C",
        "channel": {"topic": "Engineering", "isPrivate": false}}))
        .await;
    let merged = hub
        .eventually("the merged channel", async || {
            let text = hub.op(Op::Get { key: key.clone() }).await.into_text()?;
            let value: Value = serde_json::from_str(&text).ok()?;
            value.get("topic").is_some().then_some(value)
        })
        .await;
    assert_eq!(
        merged,
        json!({"name": "#eng", "topic": "Engineering", "isPrivate": false})
    );
    let ttl = hub
        .op(Op::TtlMillis { key: key.clone() })
        .await
        .as_int()
        .unwrap();
    assert!(ttl > 3_500_000 && ttl <= 3_600_000, "channel ttl {ttl}");
    hub.stop().await;
}

async fn the_recent_cache_is_invalidated(backend: Backend) {
    let hub = Hub::start(backend, |_| {}).await;
    let key = hub.keys.recent_messages("C");
    let events = [
        message_event("agent", "m1"),
        json!({"type": "channel.message.edit", "channelId": "C", "messageId": "m1", "content": "x", "editedAt": 2}),
        json!({"type": "channel.message.delete", "channelId": "C", "messageId": "m1", "deletedAt": 3}),
    ];
    for event in events {
        let cache = Op::Set {
            key: key.clone(),
            value: "[]".into(),
            ttl: Some(Duration::from_secs(300)),
            only_if_absent: false,
        };
        hub.op(cache).await;
        let kind = event["type"].as_str().unwrap().to_owned();
        hub.publish_event(event).await;
        hub.eventually(&format!("invalidation on {kind}"), async || {
            (hub.op(Op::Exists { key: key.clone() }).await == Reply::Int(1)).then_none()
        })
        .await;
    }
    hub.stop().await;
}

async fn the_eleventh_message_is_rejected_and_the_window_resets(backend: Backend) {
    let hub = Hub::start(backend, |_| {}).await;
    let limiter = RateLimiter::new(hub.store.clone(), hub.keys.clone(), LimitsConfig::default())
        .with_window(Duration::from_millis(1500));
    for n in 1..=10 {
        assert_eq!(
            limiter.check(Action::Message, "a").await.unwrap(),
            Decision::Allowed,
            "message {n}"
        );
    }
    assert_eq!(
        limiter.check(Action::Message, "a").await.unwrap(),
        Decision::Rejected {
            limit: 10,
            first_in_window: true
        }
    );
    assert_eq!(
        limiter.check(Action::Message, "a").await.unwrap(),
        Decision::Rejected {
            limit: 10,
            first_in_window: false
        }
    );
    // Another sender and another action have their own counts.
    assert_eq!(
        limiter.check(Action::Message, "b").await.unwrap(),
        Decision::Allowed
    );
    assert_eq!(
        limiter.check(Action::Reaction, "a").await.unwrap(),
        Decision::Allowed
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        limiter.check(Action::Message, "a").await.unwrap(),
        Decision::Allowed
    );
    hub.stop().await;
}

async fn an_agent_over_its_limit_is_not_relayed_and_is_told(backend: Backend) {
    let mut hub = Hub::start(backend, |config| config.limits.message = 3).await;
    for n in 1..=4 {
        hub.publish_event(message_event("chatty-agent", &format!("m{n}")))
            .await;
    }
    let notice = hub
        .next_event("the agent notification", |v| {
            v["type"] == "agent.notification"
        })
        .await;
    let content = notice["data"]["content"].as_str().unwrap();
    assert!(
        content.contains("channel.message") && content.contains('3'),
        "{content}"
    );
    let recorder = hub.recorder.clone();
    hub.eventually("three relayed messages", async || {
        let seen = recorder.seen.lock().unwrap();
        (seen.iter().filter(|t| *t == "channel.message").count() == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let relayed = recorder
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|t| *t == "channel.message")
        .count();
    assert_eq!(relayed, 3, "the 4th message was relayed");
    // Noted as refused, so an instance taking the bridge over from this one skips it too.
    let refused = |id: &str| {
        let envelope = json!({"event": message_event("chatty-agent", id), "timestamp": 1,
                              "channelId": "C"});
        let event = EventId::of("pubsub:channel:C", envelope.to_string().as_bytes());
        Op::Exists {
            key: hub.keys.refused(&event.to_string()),
        }
    };
    assert_eq!(hub.op(refused("m4")).await, Reply::Int(1));
    assert_eq!(hub.op(refused("m3")).await, Reply::Int(0));
    hub.stop().await;
}

async fn a_malformed_payload_does_not_stop_the_loop(backend: Backend) {
    let hub = Hub::start(backend, |_| {}).await;
    for garbage in [
        "test",
        "{",
        "[]",
        r#"{"type":"channel.message","message":{}}"#,
        r#"{"type":"x.unknown"}"#,
    ] {
        hub.publish("pubsub:channel:C", garbage).await;
    }
    hub.publish_event(presence_event("after-garbage", "online"))
        .await;
    let key = hub.keys.presence("C", "after-garbage");
    hub.eventually("the valid event after garbage", async || {
        (hub.op(Op::Exists { key: key.clone() }).await == Reply::Int(1)).then_some(())
    })
    .await;
    let metrics = reqwest::get(format!("http://{}/metrics", hub.running.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"hub_bridge_invalid_payloads_total{reason="not_json"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"hub_bridge_invalid_payloads_total{reason="invalid_event"} 1"#),
        "{metrics}"
    );
    hub.stop().await;
}

/// A bus of the given kind, outside a running service, for tests that drive the hub loop itself.
fn bare_bus(
    backend: Backend,
    metrics: &Arc<hub_bridge_sdk::metrics::Metrics>,
) -> (Arc<dyn Bus>, Option<RedisServer>) {
    match backend {
        Backend::Redis => {
            let server = RedisServer::start();
            let health = hub_bridge_sdk::health::Health::default();
            let bus = RedisBus::new(&server.url(), metrics.clone(), health.component("redis"))
                .expect("redis bus");
            (Arc::new(bus), Some(server))
        }
        Backend::Embedded => (Arc::new(EmbeddedBus::new(metrics.clone())), None),
    }
}

/// Subscribes to `bus` and returns once the subscription sees what is published.
async fn synced_subscription(bus: &dyn Bus, tasks: &TaskTracker) -> mpsc::Receiver<BusMessage> {
    let mut events = bus.subscribe(4096, tasks, CancellationToken::new());
    let store = bus.store();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = format!(r#"{{"type":"test.probe","n":"{}"}}"#, uuid::Uuid::new_v4());
        let _ = store.publish("pubsub:global".into(), probe.clone()).await;
        let until = Instant::now() + Duration::from_millis(200);
        while let Ok(Some(message)) = tokio::time::timeout_at(until.into(), events.recv()).await {
            if message.payload == probe.as_bytes() {
                return events;
            }
        }
        assert!(Instant::now() < deadline, "test subscription never synced");
    }
}

fn first_message(channel: &str, sender: &str) -> BusMessage {
    let event = json!({"type": "channel.message", "channelId": channel,
        "message": {"id": uuid::Uuid::new_v4().to_string(), "content": "hi", "senderId": sender,
                    "timestamp": 1708554000000i64}});
    let envelope = json!({"event": event, "timestamp": 1, "channelId": channel});
    BusMessage {
        channel: format!("pubsub:channel:{channel}"),
        payload: envelope.to_string().into_bytes(),
        received_at: Instant::now(),
    }
}

/// One event whose state update gets an error reply (another client left a string where the hub
/// keeps a set) shares a batch with ten good ones: the ten keep their state keys, follow-ups and
/// relays.
async fn one_error_reply_costs_only_its_own_event(backend: Backend) {
    let metrics = Arc::new(hub_bridge_sdk::metrics::Metrics::default());
    let (bus, _redis) = bare_bus(backend, &metrics);
    let store = bus.store();
    let keys = Keys::new("openclaw:");
    store
        .one(Op::Set {
            key: keys.members("C2"),
            value: "not a set".into(),
            ttl: None,
            only_if_absent: false,
        })
        .await
        .unwrap();
    let tasks = TaskTracker::new();
    let mut published = synced_subscription(bus.as_ref(), &tasks).await;

    // The whole batch is queued before the loop starts, so it is one pipeline.
    let (batch, messages) = mpsc::channel(64);
    batch
        .try_send(first_message("C2", "external:telegram:99"))
        .unwrap();
    for n in 0..10 {
        batch
            .try_send(first_message("C", &format!("external:telegram:{n}")))
            .unwrap();
    }
    let (relay, mut relayed) = mpsc::channel(64);
    let queue = Arc::new(Handover::new("recorder", relay, metrics.clone()));
    // This instance runs the bridge: its events go into the queue.
    queue.take_over(None, &[]);
    let limiter = RateLimiter::new(store.clone(), keys.clone(), LimitsConfig::default());
    let hub_loop = HubLoop::new(
        store.clone(),
        keys.clone(),
        StateSettings::default(),
        limiter,
        metrics.clone(),
        vec![queue],
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(hub_loop.run(messages, shutdown.clone()));

    let mut joined = std::collections::BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    while joined.len() < 10 {
        let message = tokio::time::timeout_at(deadline.into(), published.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} joins published: {joined:?}", joined.len()))
            .expect("subscription open");
        let value: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
        if value["event"]["type"] == "channel.member.join" && value["channelId"] == "C" {
            joined.insert(
                value["event"]["member"]["agentId"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
    }
    for n in 0..10 {
        let agent = format!("external:telegram:{n}");
        let presence = store
            .one(Op::Exists {
                key: keys.presence("C", &agent),
            })
            .await
            .unwrap();
        assert_eq!(presence, Reply::Int(1), "{agent}'s presence key");
    }
    let members = store
        .one(Op::SMembers {
            key: keys.members("C"),
        })
        .await
        .unwrap()
        .into_list();
    assert_eq!(members.len(), 10, "{members:?}");
    for _ in 0..11 {
        tokio::time::timeout(WAIT, relayed.recv())
            .await
            .expect("every event of the batch is relayed")
            .expect("queue open");
    }
    assert_eq!(metrics.state_errors.get(), 1);
    shutdown.cancel();
    running.await.unwrap();
}

/// A channel id that would reach into another key (`X:members`) is refused when parsed.
async fn ids_that_collide_with_the_key_layout_are_refused(backend: Backend) {
    let hub = Hub::start(backend, |_| {}).await;
    let join = json!({"type": "channel.member.join", "channelId": "X:members",
        "member": {"agentId": "intruder", "joinedAt": 1, "role": "member"}});
    hub.publish("pubsub:channel:X:members", &join.to_string())
        .await;
    hub.publish_event(presence_event("after-bad-id", "online"))
        .await;
    let key = hub.keys.presence("C", "after-bad-id");
    hub.eventually("the valid event after the bad id", async || {
        (hub.op(Op::Exists { key: key.clone() }).await == Reply::Int(1)).then_some(())
    })
    .await;
    let members = hub.keys.members("X:members");
    assert_eq!(hub.op(Op::Exists { key: members }).await, Reply::Int(0));
    let metrics = reqwest::get(format!("http://{}/metrics", hub.running.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"hub_bridge_invalid_payloads_total{reason="bad_id"} 1"#),
        "{metrics}"
    );
    assert!(
        !hub.recorder
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|t| t == "channel.member.join"),
        "the refused event was relayed"
    );
    hub.stop().await;
}

/// A payload over `hub.max_payload_bytes` is refused unparsed and counted, its agent is told, and
/// the loop goes on.
async fn an_oversized_payload_is_refused_and_its_agent_told(backend: Backend) {
    let mut hub = Hub::start(backend, |config| config.hub.max_payload_bytes = 4096).await;
    let big = json!({"type": "channel.message", "channelId": "C",
        "message": {"id": "m-big", "content": "z".repeat(64 * 1024), "senderId": "big-agent",
                    "timestamp": 1708554000000i64}});
    hub.publish_event(big).await;
    let notice = hub
        .next_event("the notice to big-agent", |value| {
            value["type"] == "agent.notification"
                && value["data"]["content"]
                    .as_str()
                    .is_some_and(|text| text.contains("over the hub's limit of 4096 bytes"))
        })
        .await;
    assert_eq!(notice["data"]["fromAgent"], "hub-bridge");
    hub.publish_event(message_event("small-agent", "m-small"))
        .await;
    hub.eventually("the next message relayed", async || {
        hub.recorder
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|t| t == "channel.message")
            .then_some(())
    })
    .await;
    assert_eq!(
        hub.recorder
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|t| *t == "channel.message")
            .count(),
        1,
        "only the small message is relayed"
    );
    let presence = hub.keys.presence("C", "big-agent");
    assert_eq!(hub.op(Op::Exists { key: presence }).await, Reply::Int(0));
    let metrics = reqwest::get(format!("http://{}/metrics", hub.running.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"hub_bridge_invalid_payloads_total{reason="too_large"} 1"#),
        "{metrics}"
    );
    hub.stop().await;
}

/// A platform event handled again (its publish retried after a store error) is counted once
/// against its sender's limit, with the window's TTL set on the first count only.
async fn a_retried_platform_event_is_counted_once(backend: Backend) {
    let hub = Hub::start(backend, |_| {}).await;
    let config = LimitsConfig {
        message: 2,
        ..LimitsConfig::default()
    };
    let limiter = RateLimiter::new(hub.store.clone(), hub.keys.clone(), config);
    let person = "external:discord:77";
    for _ in 0..3 {
        let decision = limiter
            .check_once(Action::Message, person, "discord:message:1")
            .await
            .unwrap();
        assert_eq!(decision, Decision::Allowed);
    }
    let second = limiter
        .check_once(Action::Message, person, "discord:message:2")
        .await
        .unwrap();
    assert_eq!(second, Decision::Allowed, "the retries were not counted");
    let third = limiter
        .check_once(Action::Message, person, "discord:message:3")
        .await
        .unwrap();
    assert!(
        matches!(third, Decision::Rejected { limit: 2, .. }),
        "{third:?}"
    );
    let counter = hub.keys.rate_limit(Action::Message, person);
    assert_eq!(
        hub.op(Op::Get {
            key: counter.clone()
        })
        .await
        .into_text()
        .as_deref(),
        Some("3")
    );
    let ttl = hub.op(Op::TtlMillis { key: counter }).await.as_int();
    assert!(ttl.is_some_and(|ms| ms > 0 && ms <= 60_000), "{ttl:?}");
    hub.stop().await;
}

/// Invented ids cannot grow the presence tracker without bound: beyond its maximum the presences
/// refreshed longest ago are dropped and counted, while state keeping goes on.
async fn the_presence_tracker_is_bounded(backend: Backend) {
    let hub = Hub::start(backend, |config| config.hub.max_tracked_presences = 4).await;
    for n in 0..10 {
        hub.publish_event(presence_event(&format!("invented-{n}"), "online"))
            .await;
    }
    let last = hub.keys.presence("C", "invented-9");
    hub.eventually("the last presence written", async || {
        (hub.op(Op::Exists { key: last.clone() }).await == Reply::Int(1)).then_some(())
    })
    .await;
    let metrics = reqwest::get(format!("http://{}/metrics", hub.running.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hub_bridge_presence_evictions_total 6"),
        "{metrics}"
    );
    hub.stop().await;
}

macro_rules! on_both_buses {
    ($($name:ident),* $(,)?) => {
        mod redis_bus {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Redis).await })*
        }
        mod embedded_bus {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Embedded).await })*
        }
    };
}

on_both_buses!(
    presence_event_writes_the_hash_with_a_ttl,
    a_first_message_publishes_the_online_transition_and_join_once,
    a_first_message_publishes_a_member_join,
    an_unrefreshed_presence_goes_offline,
    typing_is_added_and_removed,
    members_join_and_leave,
    channel_updates_merge,
    the_recent_cache_is_invalidated,
    the_eleventh_message_is_rejected_and_the_window_resets,
    an_agent_over_its_limit_is_not_relayed_and_is_told,
    a_malformed_payload_does_not_stop_the_loop,
    one_error_reply_costs_only_its_own_event,
    ids_that_collide_with_the_key_layout_are_refused,
    an_oversized_payload_is_refused_and_its_agent_told,
    a_retried_platform_event_is_counted_once,
    the_presence_tracker_is_bounded,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_resubscribes_after_a_redis_restart_and_readyz_reports_the_outage() {
    let mut hub = Hub::start(Backend::Redis, |_| {}).await;
    let mut redis = hub.redis.take().expect("redis backend");
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    let outage = loop {
        let (status, body) = hub.readyz().await;
        if status == 503 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never reported the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(outage["ready"], false);
    assert_eq!(outage["components"]["redis"]["ready"], false);

    redis.restart();
    let restarted = Instant::now();
    hub.wait_ready().await;
    // Pub/sub is at-most-once: keep publishing until the re-subscribed hub processes one.
    let key = hub.keys.presence("C", "after-restart");
    loop {
        let envelope = json!({"event": presence_event("after-restart", "online"), "timestamp": 1, "channelId": "C"});
        // The command connection may still be reconnecting: an error here is a retry, not a failure.
        let _ = hub
            .store
            .publish("pubsub:channel:C".into(), envelope.to_string())
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if hub.store.one(Op::Exists { key: key.clone() }).await == Ok(Reply::Int(1)) {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "hub did not re-subscribe"
        );
    }
    println!(
        "re-subscribed and processing {:?} after the restart",
        restarted.elapsed()
    );
    // The restarted Redis forgot the Lua scripts: a message (presence script) still works.
    hub.publish_event(message_event("external:telegram:9", "after-restart"))
        .await;
    let members = hub.keys.members("C");
    hub.eventually("the member added after the restart", async || {
        let list = hub
            .op(Op::SMembers {
                key: members.clone(),
            })
            .await
            .into_list();
        list.contains(&"external:telegram:9".to_owned())
            .then_some(())
    })
    .await;
    let presence = hub.keys.presence("C", "external:telegram:9");
    assert_eq!(hub.op(Op::Exists { key: presence }).await, Reply::Int(1));
    hub.stop().await;
    drop(redis);
}

/// A bridge that never reads its queue.
struct StuckBridge;

impl Bridge for StuckBridge {
    fn name(&self) -> &'static str {
        "stuck"
    }

    fn check(&self) -> BoxFuture<'_, Result<String, BridgeError>> {
        Box::pin(async { Ok("stuck".to_owned()) })
    }

    fn run<'a>(&'a self, ctx: &'a mut BridgeContext) -> BoxFuture<'a, Result<(), BridgeError>> {
        Box::pin(async move {
            ctx.status.ready("never reads");
            ctx.shutdown.cancelled().await;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bridge_queue_is_counted_and_never_stalls_the_hub() {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.hub.bridge_queue = 2;
    let recorder = RecordingBridge::default();
    let running = start_with(
        config,
        vec![Box::new(StuckBridge), Box::new(recorder.clone())],
    )
    .await
    .unwrap();
    let deadline = Instant::now() + WAIT;
    while !running.health.is_ready() {
        assert!(Instant::now() < deadline, "bridges never became ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One at a time, so only the stuck bridge's queue (size 2) overflows.
    let store = running.bus.store();
    for n in 0..5 {
        let event = json!({"event": message_event("agent", &format!("m{n}")), "timestamp": 1, "channelId": "C"});
        store
            .publish("pubsub:channel:C".into(), event.to_string())
            .await
            .unwrap();
        let deadline = Instant::now() + WAIT;
        while recorder.seen.lock().unwrap().len() <= n {
            assert!(
                Instant::now() < deadline,
                "the other bridge did not get event {n}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // The 5 messages and the agent's presence transition were routed; the stuck queue took 2.
    let deadline = Instant::now() + WAIT;
    while recorder.seen.lock().unwrap().len() < 6 {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            recorder.seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let routed = recorder.seen.lock().unwrap().len();
    let metrics = reqwest::get(format!("http://{}/metrics", running.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(routed, 6, "{:?}", recorder.seen.lock().unwrap());
    let overflow = format!(
        r#"hub_bridge_bridge_queue_overflow_total{{bridge="stuck"}} {}"#,
        routed - 2
    );
    assert!(metrics.contains(&overflow), "{metrics}");
    assert!(
        metrics.contains(r#"hub_bridge_bridge_queue_depth{bridge="stuck"} 2"#),
        "{metrics}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_runs_a_bridge_and_another_takes_over_when_it_stops() {
    let redis = RedisServer::start();
    let start = async |recorder: &RecordingBridge| {
        let mut config = Config::default();
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        config.redis.url = Some(Secret::new(redis.url()));
        config.hub.bridge_queue = 4;
        config.hub.presence_ttl_secs = 1;
        start_with(config, vec![Box::new(recorder.clone())])
            .await
            .unwrap()
    };
    let bridge_ready = |running: &Running| {
        running
            .health
            .snapshot()
            .get("recorder")
            .is_some_and(|state| state.ready)
    };
    let (first_recorder, second_recorder) =
        (RecordingBridge::default(), RecordingBridge::default());
    let first = start(&first_recorder).await;
    let deadline = Instant::now() + WAIT;
    while !bridge_ready(&first) {
        assert!(
            Instant::now() < deadline,
            "the first instance never ran the bridge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = start(&second_recorder).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!bridge_ready(&second), "two instances run the same bridge");
    let standby = second.health.snapshot()["recorder"].detail.clone();
    assert!(standby.contains("standby"), "{standby}");

    // Both hub loops see every event; only the active instance relays and counts it. Ten
    // messages are within the agent's limit of 10 only if no instance counts them twice.
    let mut events = first
        .bus
        .subscribe(1024, &TaskTracker::new(), CancellationToken::new());
    let store = first.bus.store();
    let deadline = Instant::now() + WAIT;
    for n in 0..10 {
        let event = json!({"event": message_event("agent", &format!("m{n}")), "timestamp": 1, "channelId": "C"});
        store
            .publish("pubsub:channel:C".into(), event.to_string())
            .await
            .unwrap();
        while first_recorder
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|t| *t == "channel.message")
            .count()
            <= n
        {
            assert!(Instant::now() < deadline, "message {n} was not relayed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(
        second_recorder.seen.lock().unwrap().is_empty(),
        "the standby was handed events"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", second.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("bridge_queue_overflow_total{"),
        "{metrics}"
    );

    // The agent's presence expires unrefreshed: both hub loops notice, one announces it. (Usually
    // the first announcement reaches the other loop before its own sweep; the claim behind the
    // announcement covers two sweeps within the same millisecond, which this cannot force.)
    let mut offline = 0;
    let until = Instant::now() + Duration::from_secs(4);
    while let Ok(Some(message)) = tokio::time::timeout_at(until.into(), events.recv()).await {
        let value: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
        offline += usize::from(is_presence(&value, "agent", "offline"));
    }
    assert_eq!(offline, 1, "offline announced {offline} times");

    first.stop().await;
    let stopped = Instant::now();
    while !bridge_ready(&second) {
        assert!(
            stopped.elapsed() < Duration::from_secs(12),
            "the standby never took over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("took over {:?} after the holder stopped", stopped.elapsed());
    second.stop().await;
}

/// A bridge whose first run panics; later runs wait for the test's go-ahead, then relay nothing.
struct PanicOnceBridge {
    runs: std::sync::atomic::AtomicUsize,
    go_ahead: Arc<tokio::sync::Semaphore>,
}

impl Bridge for PanicOnceBridge {
    fn name(&self) -> &'static str {
        "panicky"
    }

    fn check(&self) -> BoxFuture<'_, Result<String, BridgeError>> {
        Box::pin(async { Ok("panicky".to_owned()) })
    }

    fn run<'a>(&'a self, ctx: &'a mut BridgeContext) -> BoxFuture<'a, Result<(), BridgeError>> {
        Box::pin(async move {
            if self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                ctx.status.ready("first run");
                panic!("zero id in a mention");
            }
            let _permit = self.go_ahead.acquire().await;
            ctx.status.ready("running again");
            ctx.shutdown.cancelled().await;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_bridge_is_counted_shown_not_ready_and_restarted() {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    let go_ahead = Arc::new(tokio::sync::Semaphore::new(0));
    let bridge = PanicOnceBridge {
        runs: Default::default(),
        go_ahead: go_ahead.clone(),
    };
    let running = start_with(config, vec![Box::new(bridge)]).await.unwrap();
    let readyz = async || -> Value {
        reqwest::get(format!("http://{}/readyz", running.http_addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let deadline = Instant::now() + WAIT;
    let down = loop {
        let body = readyz().await;
        let detail = body["components"]["panicky"]["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if detail.contains("panic") {
            break body;
        }
        assert!(Instant::now() < deadline, "the panic never showed: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(down["ready"], false, "{down}");
    assert_eq!(down["components"]["panicky"]["ready"], false, "{down}");
    let detail = down["components"]["panicky"]["detail"].as_str().unwrap();
    assert!(detail.contains("zero id in a mention"), "{detail}");
    let metrics = reqwest::get(format!("http://{}/metrics", running.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"hub_bridge_bridge_failures_total{bridge="panicky",kind="panic"} 1"#),
        "{metrics}"
    );

    // Restarted after the backoff: ready again once the second run is let through.
    go_ahead.add_permits(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = readyz().await;
        if body["components"]["panicky"]["ready"] == true {
            assert_eq!(body["components"]["panicky"]["detail"], "running again");
            break;
        }
        assert!(Instant::now() < deadline, "never restarted: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
}
