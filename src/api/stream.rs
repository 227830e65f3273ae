//! The event streams of the agent API: `GET /v1/events` (Server-Sent Events) and `GET /v1/ws`
//! (WebSocket), fed by a tap of the hub loop.
//!
//! The hub loop already reads every bus message through the fixed subscriptions; it hands each
//! parsed event to a [`StreamTap`] (a `tokio::sync::broadcast`, skipped entirely while nobody
//! streams), so a stream client costs no Redis subscription. Per client a forwarder task reads the
//! tap, keeps what the client asked for (its channels, `pubsub:agent:{self}`, `pubsub:global`) and
//! offers it to the client's bounded buffer without ever waiting. A client that reads too slowly
//! misses events and is told how many (`event: lagged`, `{"missed":N}`; on a WebSocket a
//! `{"type":"lagged","missed":N}` frame); past [`LagPolicy`]'s limit it is disconnected. Neither the
//! hub loop nor any other client ever waits on it.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use hub_bridge_sdk::event::Source;
use hub_bridge_sdk::metrics::ReasonLabel;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{keepalive, publish, Api, ApiError};

/// Events the tap holds for forwarders that have not read them yet. Forwarders only filter, so
/// they fall this far behind only when starved of CPU; what they miss then is reported as lag.
pub const TAP_CAPACITY: usize = 4096;

/// A subscriber told it lagged this many times within [`LAG_PERIOD`] is disconnected.
pub const LAGS_ALLOWED: usize = 3;
pub const LAG_PERIOD: Duration = Duration::from_secs(60);

/// The most channels one stream may ask for.
pub const MAX_CHANNELS: usize = 100;

/// One hub event as the hub loop read it: the pub/sub channel, the event type and the raw payload.
#[derive(Debug)]
pub struct Tapped {
    pub channel: String,
    pub event_type: String,
    pub payload: Vec<u8>,
}

/// The hub loop's side of the streams.
#[derive(Clone)]
pub struct StreamTap {
    sender: broadcast::Sender<Arc<Tapped>>,
}

impl StreamTap {
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity);
        Self { sender }
    }

    /// Whether any stream is open; while none is, the hub loop copies nothing.
    pub fn is_listened(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Hands one event to every open stream; never waits.
    pub fn send(&self, tapped: Tapped) {
        // An error only means every stream closed meanwhile.
        let _ = self.sender.send(Arc::new(tapped));
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Tapped>> {
        self.sender.subscribe()
    }
}

/// What a stream client receives.
#[derive(Debug)]
enum Item {
    Event(Arc<Tapped>),
    /// The client missed this many events since the last thing it received.
    Lagged(u64),
}

/// When a lagging subscriber is disconnected: when it misses more events in a row than its buffer
/// holds (it is not coming back), or when it is told it lagged [`LAGS_ALLOWED`] times within
/// [`LAG_PERIOD`] (it keeps falling behind).
#[derive(Debug)]
pub struct LagPolicy {
    buffer: usize,
    told: VecDeque<Instant>,
}

impl LagPolicy {
    pub fn new(buffer: usize) -> Self {
        Self {
            buffer,
            told: VecDeque::new(),
        }
    }

    /// Whether a subscriber that has missed `missed` events in a row must go.
    pub fn too_far_behind(&self, missed: u64) -> bool {
        missed > u64::try_from(self.buffer).unwrap_or(u64::MAX)
    }

    /// Records that the subscriber was told it lagged at `now`; true when that was once too often.
    pub fn told_at(&mut self, now: Instant) -> bool {
        while self
            .told
            .front()
            .is_some_and(|at| now.duration_since(*at) >= LAG_PERIOD)
        {
            self.told.pop_front();
        }
        self.told.push_back(now);
        self.told.len() >= LAGS_ALLOWED
    }
}

/// `?channels=C1,C2`.
#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    #[serde(default)]
    channels: Option<String>,
}

/// The pub/sub channels a client streams: its channels, its own agent channel, and global.
fn wanted_channels(agent: &str, query: &StreamQuery) -> Result<HashSet<String>, ApiError> {
    let mut wanted = HashSet::from([
        Source::Agent(agent.to_owned()).channel_name(),
        Source::Global.channel_name(),
    ]);
    let requested: Vec<&str> = query
        .channels
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .filter(|id| !id.is_empty())
        .collect();
    if requested.len() > MAX_CHANNELS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_CHANNELS} channels per stream"
        )));
    }
    for id in requested {
        publish::check_channel_id(id)?;
        wanted.insert(Source::Channel(id.to_owned()).channel_name());
    }
    Ok(wanted)
}

/// A subscription: the client's bounded buffer, and how many events it missed at the end when
/// it was disconnected for lagging.
struct Subscription {
    items: mpsc::Receiver<Item>,
    dropped: oneshot::Receiver<u64>,
}

/// Starts the forwarder of one client.
fn subscribe(api: &Arc<Api>, wanted: HashSet<String>) -> Subscription {
    let (sender, items) = mpsc::channel(api.config.stream_buffer);
    let (dropped_tx, dropped) = oneshot::channel();
    let tap = api.tap.subscribe();
    let api_for_task = api.clone();
    api.tasks.spawn(async move {
        let api = api_for_task;
        api.metrics.streams.inc();
        if let Some(disconnect) = forward(&api, tap, wanted, &sender).await {
            api.metrics
                .disconnects
                .get_or_create(&ReasonLabel {
                    reason: disconnect.reason,
                })
                .inc();
            tracing::info!(
                reason = disconnect.reason,
                missed = disconnect.missed,
                "stream subscriber disconnected for lagging"
            );
            let _ = dropped_tx.send(disconnect.missed);
        }
        api.metrics.streams.dec();
    });
    Subscription { items, dropped }
}

/// Why a forwarder dropped its client.
struct Disconnect {
    /// The `reason` label of `hub_bridge_api_disconnects_total`.
    reason: &'static str,
    /// Events missed since the client was last told.
    missed: u64,
}

/// Forwards what the client wants until it goes away or the service stops (`None`), or until it
/// lags past [`LagPolicy`]'s limit.
async fn forward(
    api: &Api,
    mut tap: broadcast::Receiver<Arc<Tapped>>,
    wanted: HashSet<String>,
    sender: &mpsc::Sender<Item>,
) -> Option<Disconnect> {
    let mut policy = LagPolicy::new(api.config.stream_buffer);
    let mut missed: u64 = 0;
    loop {
        let tapped = tokio::select! {
            _ = api.shutdown.cancelled() => return None,
            _ = sender.closed() => return None,
            received = tap.recv() => received,
        };
        let tapped = match tapped {
            Ok(tapped) => tapped,
            // The forwarder itself fell behind the tap: those events are missed too (some may not
            // have been for this client; the count is an upper bound).
            Err(broadcast::error::RecvError::Lagged(count)) => {
                missed += count;
                api.metrics.missed.inc_by(count);
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        if !wanted.contains(&tapped.channel) {
            continue;
        }
        if missed > 0 {
            match sender.try_send(Item::Lagged(missed)) {
                Ok(()) => {
                    api.metrics.lagged.inc();
                    missed = 0;
                    if policy.told_at(Instant::now()) {
                        return Some(Disconnect {
                            reason: "lagged_too_often",
                            missed: 0,
                        });
                    }
                }
                Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return None,
            }
        }
        match sender.try_send(Item::Event(tapped)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                missed += 1;
                api.metrics.missed.inc();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return None,
        }
        if policy.too_far_behind(missed) {
            return Some(Disconnect {
                reason: "too_far_behind",
                missed,
            });
        }
    }
}

/// The payload as one line of compact JSON. Payloads are almost always compact already (every
/// publisher the hub knows writes `JSON.stringify` output); one with line breaks is rewritten so
/// it stays one `data:` line and one frame of compact JSON.
fn compact(payload: &[u8]) -> Option<Cow<'_, str>> {
    let text = std::str::from_utf8(payload).ok()?;
    if !text.contains(['\n', '\r']) {
        return Some(Cow::Borrowed(text));
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    serde_json::to_string(&value).ok().map(Cow::Owned)
}

fn lagged_json(missed: u64) -> String {
    json!({ "missed": missed }).to_string()
}

/// `GET /v1/events?channels=C1,C2`: Server-Sent Events.
pub async fn handle_sse(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    const ROUTE: &str = "GET /v1/events";
    let wanted = api.authenticate(&headers).and_then(|agent| {
        let Query(query) = query.map_err(|error| ApiError::BadRequest(error.body_text()))?;
        wanted_channels(&agent, &query)
    });
    let wanted = match wanted {
        Ok(wanted) => wanted,
        Err(error) => {
            api.metrics.count(ROUTE, error.status());
            return error.into_response();
        }
    };
    api.metrics.count(ROUTE, StatusCode::OK);
    let subscription = subscribe(&api, wanted);
    let events = futures_util::stream::unfold(Some(subscription), |state| async move {
        let mut subscription = state?;
        loop {
            match subscription.items.recv().await {
                Some(Item::Event(tapped)) => {
                    let Some(data) = compact(&tapped.payload) else {
                        continue;
                    };
                    let event = Event::default().event(&tapped.event_type).data(data);
                    return Some((Ok::<_, Infallible>(event), Some(subscription)));
                }
                Some(Item::Lagged(missed)) => {
                    let event = Event::default().event("lagged").data(lagged_json(missed));
                    return Some((Ok(event), Some(subscription)));
                }
                // The forwarder ended: say how much was missed if it was for lagging, then end.
                None => {
                    let missed = subscription.dropped.try_recv().ok().filter(|n| *n > 0)?;
                    let event = Event::default().event("lagged").data(lagged_json(missed));
                    return Some((Ok(event), None));
                }
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keepalive(&api.config)))
        .into_response()
}

/// `GET /v1/ws?channels=C1,C2`: the same stream as WebSocket text frames; text frames the agent
/// sends are published as with `POST /v1/events` and answered with `{"type":"published","id":..}`
/// or `{"type":"error","status":..,"error":..}`.
pub async fn handle_ws(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    const ROUTE: &str = "GET /v1/ws";
    let accepted = api.authenticate(&headers).and_then(|agent| {
        let Query(query) = query.map_err(|error| ApiError::BadRequest(error.body_text()))?;
        let wanted = wanted_channels(&agent, &query)?;
        let upgrade = upgrade.map_err(|error| ApiError::BadRequest(error.body_text()))?;
        Ok((agent, wanted, upgrade))
    });
    let (agent, wanted, upgrade) = match accepted {
        Ok(accepted) => accepted,
        Err(error) => {
            api.metrics.count(ROUTE, error.status());
            return error.into_response();
        }
    };
    api.metrics.count(ROUTE, StatusCode::SWITCHING_PROTOCOLS);
    let max = api.max_payload_bytes;
    upgrade
        .max_message_size(max)
        .on_upgrade(move |socket| run_ws(api, agent, wanted, socket))
}

async fn run_ws(api: Arc<Api>, agent: String, wanted: HashSet<String>, mut socket: WebSocket) {
    const FRAME_ROUTE: &str = "WS /v1/ws";
    let mut subscription = subscribe(&api, wanted);
    loop {
        tokio::select! {
            _ = api.shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            item = subscription.items.recv() => {
                let text = match item {
                    Some(Item::Event(tapped)) => match compact(&tapped.payload) {
                        Some(text) => text.into_owned(),
                        None => continue,
                    },
                    Some(Item::Lagged(missed)) => lagged_frame(missed),
                    None => {
                        if let Some(missed) = subscription.dropped.try_recv().ok().filter(|n| *n > 0) {
                            let _ = socket.send(Message::Text(lagged_frame(missed).into())).await;
                        }
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            frame = socket.recv() => {
                let body = match frame {
                    Some(Ok(Message::Text(text))) => axum::body::Bytes::from(text),
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    // Pings are answered by axum; pongs need nothing.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                };
                let answer = match publish::publish_as(&api, &agent, &body).await {
                    Ok(id) => {
                        api.metrics.count(FRAME_ROUTE, StatusCode::ACCEPTED);
                        json!({"type": "published", "id": id})
                    }
                    Err(error) => {
                        api.metrics.count(FRAME_ROUTE, error.status());
                        json!({"type": "error", "status": error.status().as_u16(), "error": error.to_string()})
                    }
                };
                if socket.send(Message::Text(answer.to_string().into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn lagged_frame(missed: u64) -> String {
    json!({ "type": "lagged", "missed": missed }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_more_than_the_buffer_is_too_far_behind() {
        let policy = LagPolicy::new(8);
        assert!(!policy.too_far_behind(8));
        assert!(policy.too_far_behind(9));
    }

    #[test]
    fn the_third_lag_within_a_minute_disconnects() {
        let mut policy = LagPolicy::new(8);
        let start = Instant::now();
        assert!(!policy.told_at(start));
        assert!(!policy.told_at(start + Duration::from_secs(30)));
        assert!(policy.told_at(start + Duration::from_secs(59)));
    }

    #[test]
    fn lags_older_than_a_minute_are_forgotten() {
        let mut policy = LagPolicy::new(8);
        let start = Instant::now();
        assert!(!policy.told_at(start));
        assert!(!policy.told_at(start + Duration::from_secs(30)));
        assert!(!policy.told_at(start + Duration::from_secs(61)));
        assert!(!policy.told_at(start + Duration::from_secs(95)));
        assert!(policy.told_at(start + Duration::from_secs(100)));
    }

    #[test]
    fn a_stream_gets_its_channels_its_agent_channel_and_global() {
        let query = StreamQuery {
            channels: Some("C1,C2,".to_owned()),
        };
        let wanted = wanted_channels("me", &query).unwrap();
        let expected: HashSet<String> = [
            "pubsub:channel:C1",
            "pubsub:channel:C2",
            "pubsub:agent:me",
            "pubsub:global",
        ]
        .map(str::to_owned)
        .into();
        assert_eq!(wanted, expected);
        let bad = StreamQuery {
            channels: Some("C1,a:b".to_owned()),
        };
        assert!(wanted_channels("me", &bad).is_err());
        let many = StreamQuery {
            channels: Some(vec!["c"; MAX_CHANNELS + 1].join(",")),
        };
        assert!(wanted_channels("me", &many).is_err());
    }

    #[test]
    fn payloads_are_one_line_of_compact_json() {
        assert_eq!(compact(br#"{"a":1}"#).as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(compact(b"{\n  \"a\": 1\n}").as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(compact(b"\xff"), None);
    }

    #[test]
    fn the_tap_costs_nothing_without_listeners() {
        let tap = StreamTap::new(4);
        assert!(!tap.is_listened());
        let mut receiver = tap.subscribe();
        assert!(tap.is_listened());
        tap.send(Tapped {
            channel: "pubsub:global".to_owned(),
            event_type: "system.announcement".to_owned(),
            payload: b"{}".to_vec(),
        });
        assert_eq!(receiver.try_recv().unwrap().channel, "pubsub:global");
        drop(receiver);
        assert!(!tap.is_listened());
    }
}
