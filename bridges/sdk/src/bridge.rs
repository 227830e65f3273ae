//! The contract between the hub and a bridge: the [`Bridge`] trait, the [`BridgeContext`] a bridge
//! runs with, and the [`HubHandle`] through which it publishes platform events and keeps state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::{
    now_millis, AgentEvent, AgentEventData, AgentEventKind, ChannelEvent, Envelope, Inbound,
    Origin, Source,
};
use crate::fence::Fence;
use crate::handover::EventId;
use crate::health::Component;
use crate::limits::RateLimiter;
use crate::media::Media;
use crate::metrics::Metrics;
use crate::store::{Keys, Op, Store, StoreError};

/// A hub event handed to a bridge to deliver.
#[derive(Debug)]
pub struct Delivery {
    pub source: Source,
    pub inbound: Inbound,
    /// Its name on every instance, for the handover mark ([`crate::handover`]).
    pub id: EventId,
    /// When the hub loop read it off the bus, for the relay-latency metric.
    pub received_at: Instant,
}

/// Why a bridge stopped.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The platform rejected the credentials: restarting will not help.
    #[error("credentials rejected by {platform}: {detail}")]
    Unauthorized {
        platform: &'static str,
        detail: String,
    },
    /// Configuration the platform refuses (unknown chat, missing permission at start, ...).
    #[error("{0}")]
    Fatal(String),
    /// Anything a restart with backoff may cure.
    #[error("{0}")]
    Transient(String),
}

impl BridgeError {
    /// Fatal errors stop the bridge instead of restarting it in a loop.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Unauthorized { .. } | Self::Fatal(_))
    }
}

/// A platform connector. The hub sees bridges only through this trait.
pub trait Bridge: Send + Sync + 'static {
    /// A short lowercase name (`telegram`), used in metrics, logs, leases and `/readyz`.
    fn name(&self) -> &'static str;

    /// Verifies the credentials against the platform, for `hub-bridge check`; says who the bot is.
    fn check(&self) -> BoxFuture<'_, Result<String, BridgeError>>;

    /// Relays until `ctx.shutdown` is cancelled or an error stops it. The supervisor calls it again
    /// with the same context after a transient error, so nothing queued in `ctx` is lost.
    fn run<'a>(&'a self, ctx: &'a mut BridgeContext) -> BoxFuture<'a, Result<(), BridgeError>>;
}

/// What a running bridge gets from the hub.
pub struct BridgeContext {
    /// Hub events to deliver, in the order the hub loop saw them.
    pub deliveries: mpsc::Receiver<Arc<Delivery>>,
    /// The hub; under the supervisor it carries the run's [`Fence`] ([`HubHandle::fence`]).
    pub hub: HubHandle,
    pub shutdown: CancellationToken,
    /// The bridge's entry in `/readyz`.
    pub status: Component,
}

/// How an agent is shown on the platforms (`[agents.{id}]` in the config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentProfile {
    /// Display name; the agent id when absent.
    pub name: Option<String>,
    /// An emoji shown before the name on Telegram.
    pub avatar: Option<String>,
    /// An image URL used as the Discord webhook avatar.
    pub avatar_url: Option<String>,
    /// The bearer token with which this agent uses the agent API (`/v1`); the API is on when at
    /// least one agent has one. A secret: it prints as `***`.
    pub api_token: Option<crate::config::Secret>,
}

/// A relay that was given up on, kept in `{prefix}bridge:deadletter:{bridge}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub destination: String,
    pub event_type: String,
    pub reason: String,
    /// The agent whose event it was, told through `agent.notification`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    pub payload: serde_json::Value,
    pub at: i64,
}

/// The hub as a bridge sees it: publishing, state, limits, the agent directory and metrics.
#[derive(Clone)]
pub struct HubHandle {
    store: Arc<dyn Store>,
    keys: Keys,
    limiter: RateLimiter,
    agents: Arc<BTreeMap<String, AgentProfile>>,
    metrics: Arc<Metrics>,
    media: Option<Arc<Media>>,
    fence: Option<Fence>,
}

impl HubHandle {
    /// How many dead letters a bridge keeps; older ones are trimmed.
    pub const DEAD_LETTERS_KEPT: usize = 10_000;

    pub fn new(
        store: Arc<dyn Store>,
        keys: Keys,
        limiter: RateLimiter,
        agents: BTreeMap<String, AgentProfile>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            keys,
            limiter,
            agents: Arc::new(agents),
            metrics,
            media: None,
            fence: None,
        }
    }

    /// Sets the fence of the bridge's run: the supervisor does before each run, with the token
    /// of the lease it has just acquired. The handles the run clones carry it, so what works for
    /// a run that has lost the lease is refused by the store (see [`crate::fence`]).
    pub fn set_fence(&mut self, fence: Option<Fence>) {
        self.fence = fence;
    }

    /// The fence that the outboxes present with every job they take and finish; `None` when the
    /// bridge runs without a lease (tests, embedders), and then nothing is checked.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// With the service's media desk: people's files then reach the hub as links, and agents'
    /// files the platforms as uploads. Without it (tests, embedders) files are described in text.
    pub fn with_media(mut self, media: Arc<Media>) -> Self {
        self.media = Some(media);
        self
    }

    pub fn media(&self) -> Option<&Arc<Media>> {
        self.media.as_ref()
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The store as a shared handle, for tasks that outlive a borrow.
    pub fn store_arc(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics, shared.
    pub fn metrics_arc(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The configured agents, for `/agents`.
    pub fn agents(&self) -> &BTreeMap<String, AgentProfile> {
        &self.agents
    }

    /// The agent's display name: from the directory, else the name the message carried, else the id.
    pub fn display_name(&self, agent_id: &str, author_name: Option<&str>) -> String {
        self.agents
            .get(agent_id)
            .and_then(|profile| profile.name.clone())
            .or_else(|| author_name.map(str::to_owned))
            .unwrap_or_else(|| agent_id.to_owned())
    }

    /// The configured agents as (id, display name), to recognise people named like one.
    pub fn agent_names(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.agents
            .iter()
            .map(|(id, profile)| (id.as_str(), profile.name.as_deref()))
    }

    pub fn profile(&self, agent_id: &str) -> Option<&AgentProfile> {
        self.agents.get(agent_id)
    }

    /// Publishes a channel event on behalf of a platform chat. `origin` (`telegram:{chatId}`) keeps
    /// the event from being relayed back to that chat.
    pub async fn publish(&self, event: &ChannelEvent, origin: &Origin) -> Result<(), StoreError> {
        self.store
            .exec(vec![publish_op(event, origin)])
            .await
            .map(drop)
    }

    /// The op that publishes a channel event, for callers that batch it with other ops.
    pub fn publish_op(&self, event: &ChannelEvent, origin: &Origin) -> Op {
        publish_op(event, origin)
    }

    /// The payload that publishes a channel event from `origin`.
    pub fn event_payload(&self, event: &ChannelEvent, origin: &Origin) -> String {
        Envelope::new(event, now_millis())
            .with_origin(origin)
            .to_json()
    }

    /// Publishes an event on `pubsub:agent:{agentId}`.
    pub async fn publish_to_agent(
        &self,
        agent_id: &str,
        event: &AgentEvent,
    ) -> Result<(), StoreError> {
        self.store
            .exec(vec![agent_event_op(agent_id, event)])
            .await
            .map(drop)
    }

    /// Tells an agent something through `agent.notification`.
    pub async fn notify_agent(
        &self,
        agent_id: &str,
        channel_id: Option<&str>,
        content: String,
    ) -> Result<(), StoreError> {
        self.publish_to_agent(agent_id, &notification(channel_id, content))
            .await
    }

    /// Keeps a relay that was given up on, and tells the sending agent why, in one round trip.
    pub async fn dead_letter(
        &self,
        bridge: &'static str,
        letter: DeadLetter,
    ) -> Result<(), StoreError> {
        let key = self.keys.dead_letters(bridge);
        let mut ops = vec![
            Op::RPush {
                key: key.clone(),
                value: serde_json::to_string(&letter).unwrap_or_default(),
            },
            Op::TrimToNewest {
                key,
                max_len: Self::DEAD_LETTERS_KEPT,
            },
        ];
        if let Some(agent_id) = letter.agent_id.as_deref() {
            let content = format!(
                "Your {} could not be delivered to {}: {}",
                letter.event_type, letter.destination, letter.reason
            );
            let event = notification(letter.channel_id.as_deref(), content);
            ops.push(agent_event_op(agent_id, &event));
        }
        self.metrics
            .dead_letters
            .get_or_create(&crate::metrics::BridgeLabels { bridge })
            .inc();
        self.store.exec(ops).await.map(drop)
    }
}

fn publish_op(event: &ChannelEvent, origin: &Origin) -> Op {
    Op::Publish {
        channel: Source::Channel(event.channel_id().to_owned()).channel_name(),
        payload: Envelope::new(event, now_millis())
            .with_origin(origin)
            .to_json(),
    }
}

fn agent_event_op(agent_id: &str, event: &AgentEvent) -> Op {
    Op::Publish {
        channel: Source::Agent(agent_id.to_owned()).channel_name(),
        payload: event.to_json(),
    }
}

fn notification(channel_id: Option<&str>, content: String) -> AgentEvent {
    AgentEvent {
        kind: AgentEventKind::Notification,
        data: AgentEventData {
            from_agent: Some("hub-bridge".to_owned()),
            content: Some(content),
            channel_id: channel_id.map(str::to_owned),
            action_required: None,
        },
        timestamp: now_millis(),
    }
}
