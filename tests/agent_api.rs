//! The agent API (issue 12, SPEC section 7) as an agent meets it: a real HTTP client (`reqwest`) and
//! a real WebSocket client (`tokio-tungstenite`) against the whole service, on a test-started
//! `redis-server` and on the embedded bus. Publishing, streaming (SSE and WebSocket), every refusal
//! (401, 403, 404, 413, 429), a slow reader that lags without slowing the hub loop, the relay of an
//! API message to a linked Telegram chat through the fake Bot API, and `hub-bridge check`.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hub_bridge::bus::BusMessage;
use hub_bridge::config::{Config, HttpConfig, RedisConfig};
use hub_bridge::service::{start, Running};
use hub_bridge_sdk::config::Secret;
use hub_bridge_sdk::registry::Section;
use hub_bridge_sdk::{AgentProfile, Op, Reply};
use hub_bridge_telegram::{TelegramConfig, TelegramLink};
use hub_bridge_testkit::fake_telegram::FakeTelegram;
use hub_bridge_testkit::hub::{publish, HubSpy};
use hub_bridge_testkit::redis_server::RedisServer;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const AGENT: &str = "backend-architect";
const TOKEN: &str = "ba-token-0123456789abcdef";
const OTHER: &str = "frontend-dev";
const OTHER_TOKEN: &str = "fd-token-0123456789abcdef";
const CHANNEL: &str = "9f3c2a1d-5e8f-4b6a-9c1e-2a3b4c5d6e7f";
const ELSEWHERE: &str = "c0ffee00-1111-4222-8333-444455556666";
const TG_TOKEN: &str = "123456:TEST-token_abc";
const GROUP: i64 = -1_001_234_567_890;
const WAIT: Duration = Duration::from_secs(10);

/// Which bus a test runs on.
#[derive(Clone, Copy, Debug)]
enum BusKind {
    Redis,
    Embedded,
}

/// The service with the agent API on, and its redis-server when it runs on Redis.
struct Api {
    service: Running,
    redis: Option<RedisServer>,
    base: String,
}

fn agents() -> BTreeMap<String, AgentProfile> {
    let profile = |name: &str, token: &str| AgentProfile {
        name: Some(name.to_owned()),
        api_token: Some(Secret::new(token)),
        ..AgentProfile::default()
    };
    BTreeMap::from([
        (AGENT.to_owned(), profile("Backend Architect", TOKEN)),
        (OTHER.to_owned(), profile("Frontend Dev", OTHER_TOKEN)),
    ])
}

fn base_config(redis: Option<&RedisServer>) -> Config {
    Config {
        redis: RedisConfig {
            url: redis.map(|redis| Secret::new(redis.url())),
            ..RedisConfig::default()
        },
        http: HttpConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..HttpConfig::default()
        },
        agents: agents(),
        ..Config::default()
    }
}

impl Api {
    async fn start(bus: BusKind, adjust: impl FnOnce(&mut Config)) -> Api {
        let redis = matches!(bus, BusKind::Redis).then(RedisServer::start);
        let mut config = base_config(redis.as_ref());
        adjust(&mut config);
        let service = start(config).await.expect("the service starts");
        wait_ready(&service).await;
        let base = format!("http://{}", service.http_addr);
        Api {
            service,
            redis,
            base,
        }
    }

    fn redis_url(&self) -> String {
        self.redis.as_ref().expect("runs on Redis").url()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, token: Option<&str>, body: &Value) -> reqwest::Response {
        self.post_raw(token, body.to_string()).await
    }

    async fn post_raw(&self, token: Option<&str>, body: String) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .post(self.url("/v1/events"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("POST /v1/events answers")
    }

    /// Publishes as another process on the bus would (Redis PUBLISH, or the embedded store).
    async fn publish_on_bus(&self, channel: &str, payload: &Value) {
        match &self.redis {
            Some(redis) => publish(&redis.url(), channel, payload).await,
            None => self
                .service
                .bus
                .store()
                .publish(channel.to_owned(), payload.to_string())
                .await
                .expect("embedded publish"),
        }
    }

    async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("/metrics answers")
            .text()
            .await
            .expect("metrics text")
    }

    /// Waits until `/metrics` has `line` (a full sample line start, such as `name{labels} `).
    async fn wait_metric(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let metrics = self.metrics().await;
            if done(&metrics) {
                return metrics;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{metrics}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.service.stop().await;
    }
}

async fn wait_ready(service: &Running) {
    let deadline = Instant::now() + WAIT;
    while !service.health.is_ready() {
        assert!(
            Instant::now() < deadline,
            "service not ready: {:?}",
            service.health.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn now() -> i64 {
    hub_bridge_sdk::event::now_millis()
}

fn channel_name(id: &str) -> String {
    format!("pubsub:channel:{id}")
}

/// The value of a sample in Prometheus text (0 when absent).
fn sample(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn a_message(content: &str) -> Value {
    json!({"type": "channel.message", "channelId": CHANNEL, "message": {"content": content}})
}

/// Someone else's message in the envelope hub clients publish.
fn envelope_from(sender: &str, channel: &str, id: &str, content: &str) -> Value {
    json!({
        "event": {"type": "channel.message", "channelId": channel, "message": {
            "id": id, "content": content, "senderId": sender, "timestamp": now()}},
        "timestamp": now(), "channelId": channel, "senderId": sender
    })
}

// ---------------------------------------------------------------------------------------------
// A minimal Server-Sent Events reader over reqwest
// ---------------------------------------------------------------------------------------------

/// One SSE event: its `event:` name and its `data:` (lines joined).
#[derive(Debug, Clone)]
struct SseEvent {
    name: String,
    data: String,
}

impl SseEvent {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("SSE data is JSON")
    }
}

struct SseReader {
    response: reqwest::Response,
    buffer: String,
    comments: usize,
}

impl SseReader {
    async fn open(api: &Api, token: &str, channels: &str) -> SseReader {
        let response = reqwest::Client::new()
            .get(api.url(&format!("/v1/events?channels={channels}")))
            .header("accept", "text/event-stream")
            .bearer_auth(token)
            .send()
            .await
            .expect("GET /v1/events answers");
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap_or_default();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        SseReader {
            response,
            buffer: String::new(),
            comments: 0,
        }
    }

    /// Takes the comment-only blocks (keep-alives) at the front of the buffer and counts them.
    fn count_comments(&mut self) {
        while let Some(end) = self.buffer.find("\n\n") {
            let block = &self.buffer[..end];
            if !block.lines().all(|line| line.starts_with(':')) {
                return;
            }
            self.comments += 1;
            self.buffer.drain(..end + 2);
        }
    }

    /// The next event within `WAIT`; `None` when the stream ended.
    async fn next(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(WAIT, self.next_event())
            .await
            .expect("an SSE event within 10 s")
    }

    async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data: Vec<&str> = Vec::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        name = value.trim_start().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push(value.strip_prefix(' ').unwrap_or(value));
                    } else if line.starts_with(':') {
                        self.comments += 1;
                    }
                }
                if !data.is_empty() {
                    return Some(SseEvent {
                        name,
                        data: data.join("\n"),
                    });
                }
            }
            let chunk = self.response.chunk().await.expect("SSE body readable")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------------------------

/// Subscribes to the embedded bus as the hub loop does, to see what the API published.
fn embedded_subscriber(api: &Api) -> mpsc::Receiver<BusMessage> {
    api.service
        .bus
        .subscribe(1024, &TaskTracker::new(), CancellationToken::new())
}

async fn published_message_is_seen_with_the_token_agent_as_sender(bus: BusKind) {
    let api = Api::start(bus, |_| {}).await;
    let spy = match bus {
        BusKind::Redis => Some(HubSpy::start(&api.redis_url()).await),
        BusKind::Embedded => None,
    };
    let mut embedded = matches!(bus, BusKind::Embedded).then(|| embedded_subscriber(&api));

    let response = api.post(Some(TOKEN), &a_message("hello from HTTP")).await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.expect("JSON answer");
    let id = answer["id"].as_str().expect("an id").to_owned();
    assert_eq!(id.len(), 36, "{answer}");

    let (channel, payload) = match (&spy, &mut embedded) {
        (Some(spy), _) => {
            let seen = spy
                .wait_for("the API's channel.message", WAIT, |s| {
                    s.kind() == "channel.message"
                })
                .await;
            (seen.channel, seen.json)
        }
        (None, Some(messages)) => {
            let message = tokio::time::timeout(WAIT, messages.recv())
                .await
                .expect("published within 10 s")
                .expect("bus open");
            let json = serde_json::from_slice(&message.payload).expect("JSON payload");
            (message.channel, json)
        }
        (None, None) => unreachable!("one observer per bus"),
    };
    assert_eq!(channel, channel_name(CHANNEL));
    assert_eq!(payload["senderId"], AGENT);
    assert_eq!(payload["channelId"], CHANNEL);
    let message = &payload["event"]["message"];
    assert_eq!(message["id"], id.as_str());
    assert_eq!(message["senderId"], AGENT);
    assert_eq!(message["authorId"], AGENT);
    assert_eq!(message["content"], "hello from HTTP");
    assert!(message["timestamp"].as_i64().is_some(), "{payload}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_redis_is_seen_with_the_token_agent_as_sender() {
    published_message_is_seen_with_the_token_agent_as_sender(BusKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_the_embedded_bus_is_seen_with_the_token_agent_as_sender() {
    published_message_is_seen_with_the_token_agent_as_sender(BusKind::Embedded).await;
}

async fn refusals(bus: BusKind) {
    let api = Api::start(bus, |config| config.hub.max_payload_bytes = 4096).await;

    // No token, a wrong token, another scheme: 401, on every route.
    for token in [None, Some("not-the-token-0123456789"), Some("")] {
        let response = api.post(token, &a_message("x")).await;
        assert_eq!(response.status(), 401, "{token:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.expect("JSON error");
        assert!(
            body["error"].as_str().unwrap_or_default().contains("token"),
            "{body}"
        );
    }
    let basic = reqwest::Client::new()
        .post(api.url("/v1/events"))
        .header("authorization", format!("Basic {TOKEN}"))
        .body(a_message("x").to_string())
        .send()
        .await
        .expect("answers");
    assert_eq!(basic.status(), 401);
    let stream = reqwest::Client::new()
        .get(api.url("/v1/events?channels=C"))
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .expect("answers");
    assert_eq!(stream.status(), 401);
    let mut request = format!("{}/v1/ws", api.base.replace("http", "ws"))
        .into_client_request()
        .expect("ws request");
    request.headers_mut().insert(
        "authorization",
        "Bearer wrong-token-0123456789".parse().expect("header"),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("a WebSocket with a wrong token must be refused with 401: {other:?}"),
    }

    // A body naming another sender: 403, with the reason.
    let spoofed = json!({"type": "channel.message", "channelId": CHANNEL,
        "message": {"content": "I am the other one", "senderId": OTHER}});
    let response = api.post(Some(TOKEN), &spoofed).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.expect("JSON error");
    assert!(
        body["error"].as_str().unwrap_or_default().contains(OTHER),
        "{body}"
    );
    let spoofed_envelope = json!({"event": {"type": "channel.typing", "started": true},
        "channelId": CHANNEL, "senderId": "external:telegram:1"});
    assert_eq!(api.post(Some(TOKEN), &spoofed_envelope).await.status(), 403);

    // Over hub.max_payload_bytes: 413 before the body is read.
    let oversized = a_message(&"x".repeat(5000));
    let response = api.post(Some(TOKEN), &oversized).await;
    assert_eq!(response.status(), 413);

    // Malformed: 400 with the reason.
    let response = api.post_raw(Some(TOKEN), "test".to_owned()).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("JSON error");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not JSON"),
        "{body}"
    );
    let bad_channel =
        json!({"type": "channel.message", "channelId": "a:b", "message": {"content": "x"}});
    assert_eq!(api.post(Some(TOKEN), &bad_channel).await.status(), 400);
    let bad_query = reqwest::Client::new()
        .get(api.url("/v1/events?channels=ok,bad%20id"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answers");
    assert_eq!(bad_query.status(), 400);

    let metrics = api.metrics().await;
    assert!(
        sample(
            &metrics,
            r#"hub_bridge_api_requests_total{route="POST /v1/events",status="401"}"#
        ) >= 4.0,
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            r#"hub_bridge_api_requests_total{route="POST /v1/events",status="403"}"#
        ) >= 2.0,
        "{metrics}"
    );
    assert!(!metrics.contains(TOKEN), "the token leaked into /metrics");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_on_redis_are_401_403_413_and_400_with_reasons() {
    refusals(BusKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_on_the_embedded_bus_are_401_403_413_and_400_with_reasons() {
    refusals(BusKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_is_404_when_no_agent_has_a_token() {
    let api = Api::start(BusKind::Embedded, |config| {
        for profile in config.agents.values_mut() {
            profile.api_token = None;
        }
    })
    .await;
    let response = api.post(Some(TOKEN), &a_message("x")).await;
    assert_eq!(response.status(), 404);
    let stream = reqwest::Client::new()
        .get(api.url("/v1/events"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answers");
    assert_eq!(stream.status(), 404);
    let ws = reqwest::get(api.url("/v1/ws")).await.expect("answers");
    assert_eq!(ws.status(), 404);
    // The operator's endpoints are unaffected.
    assert_eq!(
        reqwest::get(api.url("/healthz"))
            .await
            .expect("answers")
            .status(),
        200
    );
    api.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------------

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open_ws(api: &Api, token: &str, channels: &str) -> WsStream {
    let mut request = format!(
        "{}/v1/ws?channels={channels}",
        api.base.replace("http", "ws")
    )
    .into_client_request()
    .expect("ws request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let (socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the WebSocket opens");
    assert_eq!(response.status(), 101);
    socket
}

/// What the hub loop itself publishes when someone speaks (presence transitions, first
/// messages); streams carry those too.
fn is_hub_follow_up(kind: &str) -> bool {
    matches!(kind, "channel.presence" | "channel.member.join")
}

/// The next text frame as JSON, within `WAIT`.
async fn next_frame(socket: &mut WsStream) -> Value {
    loop {
        let frame = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a frame within 10 s")
            .expect("socket open")
            .expect("frame readable");
        match frame {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON frame"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn bus_events_reach_sse_and_websocket(bus: BusKind) {
    let api = Api::start(bus, |_| {}).await;
    let mut sse = SseReader::open(&api, TOKEN, CHANNEL).await;
    let mut ws = open_ws(&api, TOKEN, CHANNEL).await;

    // Not asked for: another channel, another agent's channel. Then what the agent gets: its
    // channel, its own agent channel and global, in order.
    let elsewhere = envelope_from(OTHER, ELSEWHERE, "m-elsewhere", "not for you");
    api.publish_on_bus(&channel_name(ELSEWHERE), &elsewhere)
        .await;
    let other_dm = json!({"type": "agent.direct_message", "data": {"fromAgent": AGENT, "content": "x"}, "timestamp": now()});
    api.publish_on_bus(&format!("pubsub:agent:{OTHER}"), &other_dm)
        .await;
    let in_channel = envelope_from(OTHER, CHANNEL, "m-1", "for the channel");
    api.publish_on_bus(&channel_name(CHANNEL), &in_channel)
        .await;
    let dm = json!({"type": "agent.direct_message", "data": {"fromAgent": OTHER, "content": "psst"}, "timestamp": now()});
    api.publish_on_bus(&format!("pubsub:agent:{AGENT}"), &dm)
        .await;
    let announcement =
        json!({"type": "system.announcement", "data": {"message": "maintenance at 5"}});
    api.publish_on_bus("pubsub:global", &announcement).await;

    let expected = [
        ("channel.message", in_channel),
        ("agent.direct_message", dm),
        ("system.announcement", announcement),
    ];
    for (kind, payload) in &expected {
        let event = loop {
            let event = sse.next().await.expect("the stream goes on");
            if !is_hub_follow_up(&event.name) {
                break event;
            }
        };
        assert_eq!(event.name, *kind);
        assert_eq!(
            event.data,
            payload.to_string(),
            "SSE data is the payload, compact"
        );
        let frame = loop {
            let frame = next_frame(&mut ws).await;
            if !is_hub_follow_up(frame["event"]["type"].as_str().unwrap_or_default()) {
                break frame;
            }
        };
        assert_eq!(frame, *payload);
    }

    // A client that goes away ends its forwarder: nothing keeps reading the tap for it.
    drop(sse);
    drop(ws);
    api.wait_metric("no open streams", |m| {
        sample(m, "hub_bridge_api_streams ") == 0.0
    })
    .await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_events_reach_sse_and_websocket_subscribers() {
    bus_events_reach_sse_and_websocket(BusKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_bus_events_reach_sse_and_websocket_subscribers() {
    bus_events_reach_sse_and_websocket(BusKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_are_published_as_the_token_agent() {
    let api = Api::start(BusKind::Embedded, |_| {}).await;
    let mut ws = open_ws(&api, TOKEN, CHANNEL).await;
    let mut watcher = SseReader::open(&api, OTHER_TOKEN, CHANNEL).await;

    ws.send(Message::text(a_message("said over the socket").to_string()))
        .await
        .expect("frame sent");
    // The answer and the event itself (the agent streams its channel) come back in either order.
    let mut published = None;
    let mut echoed = None;
    while published.is_none() || echoed.is_none() {
        let frame = next_frame(&mut ws).await;
        if frame["type"] == "published" {
            published = frame["id"].as_str().map(str::to_owned);
        } else {
            echoed = Some(frame);
        }
    }
    let id = published.expect("published");
    let echoed = echoed.expect("echoed");
    assert_eq!(echoed["senderId"], AGENT);
    assert_eq!(echoed["event"]["message"]["id"], id.as_str());
    let seen = loop {
        let seen = watcher.next().await.expect("the watcher's stream goes on");
        if !is_hub_follow_up(&seen.name) {
            break seen;
        }
    };
    assert_eq!(seen.name, "channel.message");
    assert_eq!(
        seen.json()["event"]["message"]["content"],
        "said over the socket"
    );
    assert_eq!(seen.json()["senderId"], AGENT);

    let spoofed = json!({"type": "channel.message", "channelId": CHANNEL,
        "message": {"content": "x", "senderId": OTHER}});
    ws.send(Message::text(spoofed.to_string()))
        .await
        .expect("frame sent");
    let answer = loop {
        let frame = next_frame(&mut ws).await;
        if is_hub_follow_up(frame["event"]["type"].as_str().unwrap_or_default()) {
            continue;
        }
        break frame;
    };
    assert_eq!(answer["type"], "error");
    assert_eq!(answer["status"], 403);
    api.stop().await;
}

/// A reader that asks for the stream and then reads nothing: a raw TCP connection with a small
/// receive buffer, so the service's writes back up quickly.
async fn stalled_sse_reader(api: &Api) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let mut stream = socket
        .connect(api.service.http_addr)
        .await
        .expect("connects");
    let request = format!(
        "GET /v1/events?channels={CHANNEL} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {OTHER_TOKEN}\r\nAccept: text/event-stream\r\n\r\n",
        api.service.http_addr
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    stream
}

/// Decodes an HTTP/1.1 chunked body (after the head) into its text.
fn dechunk(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let Some((head, mut body)) = text.split_once("\r\n\r\n") else {
        return String::new();
    };
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}

async fn a_slow_reader_lags_and_is_dropped_while_the_hub_loop_and_others_keep_up(bus: BusKind) {
    const BUFFER: usize = 32;
    // Each person's message brings the hub loop's member.join and presence with it: 3 events
    // per message, so a batch fits the fast reader's buffer even before it reads any.
    const BATCH: usize = 4;
    const MOST: usize = 4000;
    let api = Api::start(bus, |config| {
        config.api.stream_buffer = BUFFER;
    })
    .await;
    let mut stalled = stalled_sse_reader(&api).await;
    let mut fast = SseReader::open(&api, TOKEN, CHANNEL).await;
    // The stalled reader is subscribed once the service counts two open streams.
    api.wait_metric("two open streams", |m| {
        sample(m, "hub_bridge_api_streams ") >= 2.0
    })
    .await;

    // People's messages (one person each, so the hub loop adds a member per message), in batches
    // that the fast reader takes in before the next: until the stalled reader is dropped.
    let padding = "x".repeat(16 * 1024);
    let mut sent = 0;
    let mut dropped = false;
    while !dropped {
        assert!(
            sent < MOST,
            "the stalled reader was never dropped after {sent} events"
        );
        for _ in 0..BATCH {
            sent += 1;
            let person = format!("external:telegram:{sent}");
            let payload = envelope_from(&person, CHANNEL, &format!("m-{sent}"), &padding);
            api.publish_on_bus(&channel_name(CHANNEL), &payload).await;
        }
        for expected in sent - BATCH + 1..=sent {
            let event = loop {
                let event = fast.next().await.expect("the fast stream goes on");
                assert_ne!(event.name, "lagged", "the fast reader never lags");
                if event.name == "channel.message" {
                    break event;
                }
            };
            assert_eq!(
                event.json()["event"]["message"]["id"],
                format!("m-{expected}")
            );
        }
        let metrics = api.metrics().await;
        dropped = sample(
            &metrics,
            r#"hub_bridge_api_disconnects_total{reason="too_far_behind"}"#,
        ) >= 1.0;
    }

    // The hub loop kept every state key up to date meanwhile: every person is a member.
    let members = api
        .service
        .bus
        .store()
        .one(Op::SMembers {
            key: format!("openclaw:channel:{CHANNEL}:members"),
        })
        .await
        .expect("members readable");
    let Reply::List(members) = members else {
        panic!("members: {members:?}");
    };
    assert_eq!(members.len(), sent, "one member per message");

    // The stalled reader, reading at last, finds the events it had room for, then how many it
    // missed, then the end of the response (the last chunk; the connection itself may stay).
    let mut raw = Vec::new();
    let read_to_last_chunk = async {
        let mut chunk = vec![0u8; 64 * 1024];
        while !raw.ends_with(b"\r\n0\r\n\r\n") {
            let read = stalled.read(&mut chunk).await.expect("readable");
            assert!(read > 0, "the connection closed before the response ended");
            raw.extend_from_slice(&chunk[..read]);
        }
    };
    tokio::time::timeout(WAIT, read_to_last_chunk)
        .await
        .expect("the dropped stream ends within 10 s");
    let body = dechunk(&raw);
    let lagged = body
        .split("\n\n")
        .find_map(|block| block.strip_prefix("event: lagged\ndata: "))
        .unwrap_or_else(|| panic!("no lagged event in {} bytes", body.len()));
    let missed = serde_json::from_str::<Value>(lagged).expect("JSON")["missed"]
        .as_u64()
        .expect("missed count");
    assert!(missed > BUFFER as u64, "missed {missed}");
    let metrics = api.metrics().await;
    assert!(
        sample(&metrics, "hub_bridge_api_missed_events_total ") >= missed as f64,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "hub_bridge_subscriber_overflow_total "),
        0.0,
        "{metrics}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_a_slow_reader_lags_and_is_dropped_while_the_hub_loop_and_others_keep_up() {
    a_slow_reader_lags_and_is_dropped_while_the_hub_loop_and_others_keep_up(BusKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_bus_a_slow_reader_lags_and_is_dropped_while_the_hub_loop_and_others_keep_up(
) {
    a_slow_reader_lags_and_is_dropped_while_the_hub_loop_and_others_keep_up(BusKind::Embedded)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_gets_keep_alive_comments() {
    let api = Api::start(BusKind::Embedded, |config| config.api.keepalive_secs = 1).await;
    let mut sse = SseReader::open(&api, TOKEN, CHANNEL).await;
    let announcement = json!({"type": "system.announcement", "data": {"message": "after a pause"}});
    // Wait for a keep-alive comment (the stream is idle), then check the stream still carries
    // events after it.
    let deadline = Instant::now() + WAIT;
    while sse.comments == 0 {
        assert!(
            Instant::now() < deadline,
            "no keep-alive comment within 10 s"
        );
        let chunk = tokio::time::timeout_at(deadline.into(), sse.response.chunk())
            .await
            .expect("a keep-alive within 10 s")
            .expect("readable")
            .expect("the stream goes on");
        sse.buffer
            .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        sse.count_comments();
    }
    api.publish_on_bus("pubsub:global", &announcement).await;
    let event = sse.next().await.expect("the stream goes on");
    assert_eq!(event.name, "system.announcement");
    api.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Through to Telegram, and the rate limit
// ---------------------------------------------------------------------------------------------

async fn api_messages_reach_telegram_and_a_full_window_answers_429(bus: BusKind) {
    let tg = FakeTelegram::start(TG_TOKEN).await;
    let api_url = tg.api_url();
    let api = Api::start(bus, move |config| {
        config.limits.message = 2;
        let links = vec![TelegramLink {
            channel: CHANNEL.to_owned(),
            chat: GROUP,
        }];
        config.bridges.push(Section::new(TelegramConfig {
            poll_timeout_secs: 1,
            chat_sends_per_sec: 50,
            group_sends_per_min: 1000,
            sends_per_sec: 100,
            ..TelegramConfig::new(Secret::new(TG_TOKEN), api_url, links)
        }));
    })
    .await;

    for text in ["first from the API", "second from the API"] {
        assert_eq!(api.post(Some(TOKEN), &a_message(text)).await.status(), 202);
        tg.wait_until(&format!("`{text}` in the group"), WAIT, |tg| {
            tg.messages_in(GROUP).iter().any(|m| m.plain.contains(text))
        })
        .await;
    }
    let shown = tg.messages_in(GROUP);
    assert!(
        shown.iter().all(|m| m.plain.contains("Backend Architect")),
        "headed by the agent's name: {shown:?}"
    );

    // The window is full (the hub loop counted both): refused before publishing.
    let response = api.post(Some(TOKEN), &a_message("third, too many")).await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("whole seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let body: Value = response.json().await.expect("JSON error");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("limit of 2"),
        "{body}"
    );
    // Another agent's window is its own.
    assert_eq!(
        api.post(Some(OTHER_TOKEN), &a_message("from the other agent"))
            .await
            .status(),
        202
    );
    tg.wait_until("the other agent's message", WAIT, |tg| {
        tg.messages_in(GROUP)
            .iter()
            .any(|m| m.plain.contains("from the other agent"))
    })
    .await;
    assert!(
        !tg.messages_in(GROUP)
            .iter()
            .any(|m| m.plain.contains("third, too many")),
        "the refused message was not relayed"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_api_messages_reach_telegram_and_a_full_window_answers_429() {
    api_messages_reach_telegram_and_a_full_window_answers_429(BusKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_bus_api_messages_reach_telegram_and_a_full_window_answers_429() {
    api_messages_reach_telegram_and_a_full_window_answers_429(BusKind::Embedded).await;
}

/// With no bridge in the service nothing else counts an agent's actions: the API counts them, so
/// the quick start's embedded bus enforces `[limits]` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_bridges_the_api_counts_the_limit_itself() {
    let api = Api::start(BusKind::Embedded, |config| config.limits.message = 2).await;
    for text in ["one", "two"] {
        assert_eq!(api.post(Some(TOKEN), &a_message(text)).await.status(), 202);
    }
    let response = api.post(Some(TOKEN), &a_message("three")).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        api.post(Some(OTHER_TOKEN), &a_message("other"))
            .await
            .status(),
        202
    );
    api.stop().await;
}

// ---------------------------------------------------------------------------------------------
// hub-bridge check
// ---------------------------------------------------------------------------------------------

fn check_output(toml: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hub-bridge.toml");
    std::fs::write(&path, toml).expect("config written");
    let output = Command::new(env!("CARGO_BIN_EXE_hub-bridge"))
        .args(["check", "--config", path.to_str().expect("UTF-8 path")])
        .env_remove("HUB_LOG")
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}");
    stdout
}

#[test]
fn check_reports_whether_the_agent_api_is_on_and_for_whom() {
    let enabled = check_output(&format!(
        "[agents.{AGENT}]\nname = \"Backend Architect\"\napi_token = \"{TOKEN}\"\n[agents.quiet]\nname = \"Quiet\"\n"
    ));
    let line = enabled
        .lines()
        .find(|line| line.contains("agent api"))
        .unwrap_or_else(|| panic!("no agent api line: {enabled}"));
    assert!(line.contains("enabled") && line.contains(AGENT), "{line}");
    assert!(!line.contains("quiet"), "{line}");
    assert!(!enabled.contains(TOKEN), "the token leaked: {enabled}");

    let disabled = check_output("[agents.quiet]\nname = \"Quiet\"\n");
    assert!(
        disabled
            .lines()
            .any(|line| line.contains("agent api") && line.contains("disabled")),
        "{disabled}"
    );
}
