//! The subscriber side of the Redis bus: one RESP3 `ConnectionManager` with automatic
//! resubscription, the watchdog that PINGs it and counts subscription confirmations after every
//! disconnect (rebuilding the connection when either does not come), and the routing of pushes to
//! the hub loop without ever blocking. When the primary can move (Sentinel), a lost connection or
//! a node that no longer answers `ROLE` as the primary ends the session at once, and the next one
//! asks the Sentinels where the primary is now and subscribes there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hub_bridge_sdk::health::Component;
use hub_bridge_sdk::metrics::Metrics;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ProtocolVersion, PushInfo, PushKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::primary::{address, Primary};
use super::MAX_RECONNECT_DELAY;
use crate::bus::{BusMessage, CHANNEL_PATTERNS, GLOBAL_CHANNEL};

/// How often the watchdog PINGs, and how many missed answers make it rebuild the connection.
const PING_EVERY: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
const MISSED_PINGS_BEFORE_REBUILD: u32 = 3;
/// How long re-subscription after a disconnect may take before the connection is rebuilt.
const RESUBSCRIBE_DEADLINE: Duration = Duration::from_secs(5);
/// The first delay before rebuilding a lost subscription; it doubles up to the cap while
/// rebuilding fails, and starts over once a session subscribed.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Owns the subscription and rebuilds it whenever the watchdog says it is gone.
pub(super) struct Subscriber {
    pub(super) primary: Arc<Primary>,
    pub(super) sender: mpsc::Sender<BusMessage>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) status: Component,
}

/// A subscription-related push: everything that is not a message.
#[derive(Debug)]
enum Control {
    Disconnected,
    Subscribed,
}

/// Why a session ended, and whether it had subscribed (then the next rebuild starts quickly).
struct Lost {
    reason: String,
    had_subscribed: bool,
}

impl Lost {
    fn before_subscribing(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            had_subscribed: false,
        }
    }

    fn after_subscribing(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            had_subscribed: true,
        }
    }
}

impl Subscriber {
    #[tracing::instrument(name = "redis_subscriber", skip_all)]
    pub(super) async fn run(self, shutdown: CancellationToken) {
        let mut delay = FIRST_RETRY_DELAY;
        let mut first = true;
        while !shutdown.is_cancelled() {
            if !first {
                self.metrics.redis_reconnects.inc();
            }
            first = false;
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = self.session() => outcome,
            };
            let Err(Lost {
                reason,
                had_subscribed,
            }) = outcome
            else {
                return;
            };
            if had_subscribed {
                delay = FIRST_RETRY_DELAY;
            }
            self.status.not_ready(&reason);
            tracing::warn!(%reason, retry_in = ?delay, "redis subscription lost");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RECONNECT_DELAY);
        }
    }

    /// Connects, subscribes and watches one connection until it is beyond repair.
    async fn session(&self) -> Result<(), Lost> {
        let (control_tx, mut control) = mpsc::unbounded_channel();
        let push_sender = {
            let sender = self.sender.clone();
            let metrics = self.metrics.clone();
            move |push: PushInfo| -> Result<(), redis::aio::SendError> {
                route_push(push, &sender, &control_tx, &metrics);
                Ok(())
            }
        };
        let primary = self
            .primary
            .client()
            .await
            .map_err(Lost::before_subscribing)?;
        let node = address(&primary);
        let info = primary.get_connection_info().clone();
        let redis_settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(redis_settings);
        let client =
            redis::Client::open(info).map_err(|e| Lost::before_subscribing(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_push_sender(push_sender)
            .set_automatic_resubscription()
            .set_number_of_retries(usize::MAX)
            .set_max_delay(MAX_RECONNECT_DELAY)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(PING_TIMEOUT));
        let mut manager = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| Lost::before_subscribing(format!("cannot connect: {:?}", e.kind())))?;
        for pattern in CHANNEL_PATTERNS {
            manager.psubscribe(pattern).await.map_err(|e| {
                Lost::before_subscribing(format!("PSUBSCRIBE failed: {:?}", e.kind()))
            })?;
        }
        manager
            .subscribe(GLOBAL_CHANNEL)
            .await
            .map_err(|e| Lost::before_subscribing(format!("SUBSCRIBE failed: {:?}", e.kind())))?;
        let can_move = self.primary.can_move();
        let subscribed = if can_move {
            format!("subscribed on the primary {node}")
        } else {
            "subscribed".to_owned()
        };
        self.status.ready(&subscribed);
        tracing::info!(%node, "redis subscription established");

        let expected_confirmations = CHANNEL_PATTERNS.len() + 1;
        let mut confirmations_since_disconnect = expected_confirmations;
        let mut resubscribe_deadline: Option<Instant> = None;
        let mut missed_pings = 0;
        let mut ticker = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                Some(event) = control.recv() => match event {
                    // Reconnecting to the same address would find the old primary, dead or
                    // demoted (its pub/sub still fed by replication, so nothing would look
                    // wrong): ask the Sentinels instead.
                    Control::Disconnected if can_move => {
                        self.primary.lost();
                        return Err(Lost::after_subscribing(format!(
                            "connection to the primary {node} lost; failing over: asking the sentinels"
                        )));
                    }
                    Control::Disconnected => {
                        self.status.not_ready("connection lost; reconnecting");
                        self.metrics.redis_reconnects.inc();
                        confirmations_since_disconnect = 0;
                        resubscribe_deadline = Some(Instant::now() + RESUBSCRIBE_DEADLINE);
                    }
                    Control::Subscribed => {
                        confirmations_since_disconnect += 1;
                        if confirmations_since_disconnect == expected_confirmations {
                            resubscribe_deadline = None;
                            self.status.ready(&subscribed);
                            tracing::info!("redis subscription restored");
                        }
                    }
                },
                _ = ticker.tick() => {
                    // Under Sentinel the watchdog asks ROLE instead of PING (as cheap): a node
                    // demoted without dropping the connection is then left within a second.
                    let ping = redis::cmd(if can_move { "ROLE" } else { "PING" });
                    let answer = ping.query_async::<redis::Value>(&mut manager);
                    match tokio::time::timeout(PING_TIMEOUT, answer).await {
                        Ok(Ok(answer)) => {
                            if can_move && !is_primary(&answer) {
                                self.primary.lost();
                                return Err(Lost::after_subscribing(format!(
                                    "{node} is no longer the primary; failing over: asking the sentinels"
                                )));
                            }
                            if missed_pings > 0 && resubscribe_deadline.is_none() {
                                self.status.ready(&subscribed);
                            }
                            missed_pings = 0;
                        }
                        _ => {
                            missed_pings += 1;
                            self.status.not_ready("redis is not answering PING");
                        }
                    }
                    if missed_pings >= MISSED_PINGS_BEFORE_REBUILD {
                        return Err(Lost::after_subscribing(format!(
                            "{missed_pings} PINGs unanswered"
                        )));
                    }
                    if resubscribe_deadline.is_some_and(|deadline| Instant::now() > deadline)
                        && missed_pings == 0
                    {
                        return Err(Lost::after_subscribing("re-subscription not confirmed"));
                    }
                }
            }
        }
    }
}

/// Hands a push to the hub loop (messages) or to the watchdog (everything else), never blocking.
fn route_push(
    push: PushInfo,
    sender: &mpsc::Sender<BusMessage>,
    control: &mpsc::UnboundedSender<Control>,
    metrics: &Metrics,
) {
    let received_at = Instant::now();
    let mut data = push.data;
    match (push.kind, data.len()) {
        (PushKind::Message, 2) | (PushKind::PMessage, 3) => {}
        (PushKind::Disconnection, _) => {
            let _ = control.send(Control::Disconnected);
            return;
        }
        (PushKind::Subscribe | PushKind::PSubscribe, _) => {
            let _ = control.send(Control::Subscribed);
            return;
        }
        _ => return,
    }
    // The last two items are the channel and the payload; moved out, not copied.
    let (Some(payload), Some(channel)) = (data.pop().and_then(bytes), data.pop().and_then(bytes))
    else {
        return;
    };
    let message = BusMessage {
        channel: String::from_utf8_lossy(&channel).into_owned(),
        payload,
        received_at,
    };
    if let Err(error) = sender.try_send(message) {
        metrics.subscriber_overflow.inc();
        if let mpsc::error::TrySendError::Full(message) = error {
            tracing::warn!(channel = %message.channel, "hub loop queue full; message dropped");
        }
    }
}

/// Whether a `ROLE` reply says `master` (its first element).
fn is_primary(role: &redis::Value) -> bool {
    let redis::Value::Array(items) = role else {
        return false;
    };
    match items.first() {
        Some(redis::Value::BulkString(kind)) => kind.as_slice() == b"master",
        Some(redis::Value::SimpleString(kind)) => kind == "master",
        _ => false,
    }
}

fn bytes(value: redis::Value) -> Option<Vec<u8>> {
    match value {
        redis::Value::BulkString(bytes) => Some(bytes),
        redis::Value::SimpleString(text) => Some(text.into_bytes()),
        _ => None,
    }
}
