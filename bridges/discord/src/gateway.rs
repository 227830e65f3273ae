//! The gateway connection: serenity's `Client` (built on the bridge's own `Http`, so `api_url`
//! applies to gateway discovery too) with an `EventHandler` that only forwards what the bridge
//! needs into one queue, and the loop that (re)starts the client with IDENTIFY spacing.
//!
//! Serenity reconnects and resumes by itself; it spaces its own re-IDENTIFYs 5 s apart. A fresh
//! client (a new run, or a restart here after the client gave up) would IDENTIFY at once, so
//! [`identify_gate`] keeps every start at least [`IDENTIFY_SPACING`] after the previous one,
//! across runs and across instances (a key in the store), and a crash loop never exceeds
//! Discord's session-start limits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hub_bridge_sdk::health::Component;
use hub_bridge_sdk::{BridgeError, Op, Reply, Store};
use serenity::all::{
    Context, EventHandler, GatewayIntents, Message, MessageUpdateEvent, Reaction, Ready,
    ResumedEvent, TypingStartEvent,
};
use serenity::client::ClientBuilder;
use serenity::gateway::{ConnectionStage, ShardManager};
use serenity::http::{LightMethod, Route};
use serenity::model::id::{ChannelId, GuildId, MessageId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The intents a bridge needs (PLATFORMS.md).
pub fn intents() -> GatewayIntents {
    GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT
        | GatewayIntents::GUILD_MESSAGE_REACTIONS
        | GatewayIntents::GUILD_MESSAGE_TYPING
        | GatewayIntents::DIRECT_MESSAGES
}

/// The least time between two IDENTIFYs of fresh clients.
pub const IDENTIFY_SPACING: Duration = Duration::from_secs(5);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);

/// What the gateway told the bridge, in the order the handler saw it.
#[derive(Debug)]
pub enum GatewayEvent {
    /// A new session: at start, or after a reconnect that could not resume.
    Ready {
        user_id: u64,
        name: String,
    },
    Resumed,
    /// A new message, with when the gateway delivered it (for the relay-latency metric).
    Message(Box<Message>, Instant),
    Update(Box<MessageUpdateEvent>),
    Delete {
        channel_id: u64,
        message_id: u64,
        guild_id: Option<u64>,
    },
    Reaction {
        reaction: Box<Reaction>,
        added: bool,
    },
    Typing(Box<TypingStartEvent>),
}

impl GatewayEvent {
    /// The event's kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Ready { .. } => "ready",
            Self::Resumed => "resumed",
            Self::Message(..) => "message",
            Self::Update(_) => "message_update",
            Self::Delete { .. } => "message_delete",
            Self::Reaction { .. } => "reaction",
            Self::Typing(_) => "typing",
        }
    }
}

/// Forwards gateway events into the bridge's queue. Serenity runs every handler call in a task
/// of its own, so the send is the first and only thing each call does (see `inbound` for how
/// the rare reordering between such tasks is undone).
#[derive(Clone)]
pub struct Handler {
    events: mpsc::Sender<GatewayEvent>,
}

impl Handler {
    pub fn new(events: mpsc::Sender<GatewayEvent>) -> Self {
        Self { events }
    }

    async fn forward(&self, event: GatewayEvent) {
        // The queue is bounded; when it is full this waits (serenity keeps reading the socket,
        // so the backlog is the waiting handler tasks). Nothing is dropped. A closed queue means
        // the run is ending.
        let _ = self.events.send(event).await;
    }
}

#[serenity::async_trait]
impl EventHandler for Handler {
    async fn ready(&self, _ctx: Context, ready: Ready) {
        self.forward(GatewayEvent::Ready {
            user_id: ready.user.id.get(),
            name: ready.user.name.clone(),
        })
        .await;
    }

    async fn resume(&self, _ctx: Context, _event: ResumedEvent) {
        self.forward(GatewayEvent::Resumed).await;
    }

    async fn message(&self, _ctx: Context, message: Message) {
        self.forward(GatewayEvent::Message(Box::new(message), Instant::now()))
            .await;
    }

    async fn message_update(
        &self,
        _ctx: Context,
        _old: Option<Message>,
        _new: Option<Message>,
        event: MessageUpdateEvent,
    ) {
        self.forward(GatewayEvent::Update(Box::new(event))).await;
    }

    async fn message_delete(
        &self,
        _ctx: Context,
        channel_id: ChannelId,
        message_id: MessageId,
        guild_id: Option<GuildId>,
    ) {
        self.forward(GatewayEvent::Delete {
            channel_id: channel_id.get(),
            message_id: message_id.get(),
            guild_id: guild_id.map(GuildId::get),
        })
        .await;
    }

    async fn reaction_add(&self, _ctx: Context, reaction: Reaction) {
        self.forward(GatewayEvent::Reaction {
            reaction: Box::new(reaction),
            added: true,
        })
        .await;
    }

    async fn reaction_remove(&self, _ctx: Context, reaction: Reaction) {
        self.forward(GatewayEvent::Reaction {
            reaction: Box::new(reaction),
            added: false,
        })
        .await;
    }

    async fn typing_start(&self, _ctx: Context, event: TypingStartEvent) {
        self.forward(GatewayEvent::Typing(Box::new(event))).await;
    }
}

/// How often the shard's connection stage is read for `/readyz`.
const STATUS_EVERY: Duration = Duration::from_millis(250);

/// Runs serenity's client until `shutdown`, restarting it (with IDENTIFY spacing and capped
/// backoff) when it gives up; returns an error only for what a restart cannot cure. Reports the
/// connection's state in `status`.
pub async fn run(
    rest: &crate::rest::Rest,
    token: &str,
    handler: Handler,
    gate: &IdentifyGate<'_>,
    shutdown: &CancellationToken,
    status: &Component,
    bot_name: &str,
) -> Result<(), BridgeError> {
    let mut delay = Duration::from_secs(1);
    loop {
        // Serenity falls back to Discord's own gateway when `GET /gateway` fails; behind a proxy
        // or a fake that would be the wrong place, so the URL must be there before a start.
        if let Err(error) = rest
            .call(LightMethod::Get, Route::Gateway, &[], None, "get:gateway")
            .await
        {
            status.not_ready(&format!("Discord gateway discovery failed: {error}"));
            tracing::warn!(%error, retry_in = ?delay, "Discord gateway discovery failed");
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RESTART_DELAY);
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            () = gate.wait() => {}
        }
        let client = ClientBuilder::new_with_http(rest.gateway_http(token), intents())
            .event_handler(handler.clone())
            .await;
        let mut client = match client {
            Ok(client) => client,
            Err(error) => return Err(BridgeError::Transient(error.to_string())),
        };
        let manager = client.shard_manager.clone();
        let started = Instant::now();
        // The stage is read from serenity's shard manager rather than from stage-update
        // events, which serenity delivers in tasks of their own and so possibly out of order.
        let reporter = AbortOnDrop(tokio::spawn(report_stage(
            manager.clone(),
            status.clone(),
            format!("connected to Discord as {bot_name}"),
        )));
        let result = tokio::select! {
            result = client.start() => result,
            _ = shutdown.cancelled() => {
                manager.shutdown_all().await;
                return Ok(());
            }
        };
        drop(reporter);
        status.not_ready("Discord gateway client stopped");
        let error = match result {
            Ok(()) if shutdown.is_cancelled() => return Ok(()),
            Ok(()) => "the gateway client stopped".to_owned(),
            Err(serenity::Error::Gateway(
                serenity::gateway::GatewayError::InvalidAuthentication,
            )) => {
                return Err(BridgeError::Unauthorized {
                    platform: "discord",
                    detail: "the gateway rejected the token (4004)".to_owned(),
                })
            }
            Err(serenity::Error::Gateway(
                error @ (serenity::gateway::GatewayError::InvalidGatewayIntents
                | serenity::gateway::GatewayError::DisallowedGatewayIntents),
            )) => {
                return Err(BridgeError::Fatal(format!(
                    "Discord refused the bridge's intents ({error}); enable the Message Content \
                     intent for the bot in the developer portal"
                )))
            }
            Err(error) => error.to_string(),
        };
        if started.elapsed() > MAX_RESTART_DELAY {
            delay = Duration::from_secs(1);
        }
        tracing::warn!(%error, retry_in = ?delay, "Discord gateway client stopped; restarting");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RESTART_DELAY);
    }
}

/// Reports the shard's connection stage in `status` whenever it changes.
async fn report_stage(manager: Arc<ShardManager>, status: Component, ready: String) {
    let mut last = None;
    loop {
        let stage = manager
            .runners
            .lock()
            .await
            .values()
            .next()
            .map(|runner| runner.stage);
        if stage != last {
            match stage {
                Some(ConnectionStage::Connected) => status.ready(&ready),
                Some(stage) => status.not_ready(&format!("Discord gateway: {stage:?}")),
                None => status.not_ready("Discord gateway: starting"),
            }
            last = stage;
        }
        tokio::time::sleep(STATUS_EVERY).await;
    }
}

/// Aborts a task when dropped, on every way out of the scope that owns it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Spaces the IDENTIFYs of fresh clients [`IDENTIFY_SPACING`] apart: in this process (the last
/// start is remembered by the bridge across runs) and across instances (a key in the store that
/// lives for the spacing; while the store is down, the local memory alone decides).
pub struct IdentifyGate<'a> {
    pub store: &'a dyn Store,
    pub key: String,
    pub last_start: &'a Mutex<Option<Instant>>,
}

impl IdentifyGate<'_> {
    pub async fn wait(&self) {
        loop {
            let last = *self
                .last_start
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(wait) = last.and_then(|at| IDENTIFY_SPACING.checked_sub(at.elapsed())) {
                tokio::time::sleep(wait).await;
            }
            let claim = self
                .store
                .exec(vec![
                    Op::Set {
                        key: self.key.clone(),
                        value: "1".to_owned(),
                        ttl: Some(IDENTIFY_SPACING),
                        only_if_absent: true,
                    },
                    Op::TtlMillis {
                        key: self.key.clone(),
                    },
                ])
                .await;
            let wait = match claim.as_deref() {
                // Claimed; or the store is down and the local spacing above decides.
                Ok([Reply::Ok, ..]) | Err(_) => None,
                // Another start holds the slot for this long.
                Ok([_, ttl]) => ttl
                    .as_int()
                    .filter(|ttl| *ttl > 0)
                    .map(|ttl| Duration::from_millis(ttl.unsigned_abs()).min(IDENTIFY_SPACING)),
                Ok(_) => None,
            };
            match wait {
                None => break,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
        *self
            .last_start
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }
}
