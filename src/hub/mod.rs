//! The hub loop: reads every payload off the bus, keeps the state keys true to it, enforces the
//! outbound rate limits, and hands each event to every bridge's bounded queue (through its
//! [`Handover`]: kept instead while another instance runs the bridge).
//!
//! It never waits on a bridge: a full bridge queue drops the event for that bridge with a count
//! and a warning. It batches whatever the subscriber has queued (up to [`BATCH`] payloads) into
//! one pipeline, so a burst costs one round trip rather than one per event.

mod oversized;
pub mod state;
pub mod tracker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hub_bridge_sdk::event::{
    now_millis, parse, AgentEvent, AgentEventData, AgentEventKind, ChannelEvent, Envelope,
    HubEvent, Inbound, Presence, PresenceStatus, Source,
};
use hub_bridge_sdk::handover::EventId;
use hub_bridge_sdk::limits::{decide, Action, Decision, RateLimiter};
use hub_bridge_sdk::metrics::{
    ActionDirection, BridgeLabels, Direction, EventTypeLabel, KindLabel, Metrics, ReasonLabel,
};
use hub_bridge_sdk::{Delivery, ExternalId, Keys, Op, Reply, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::{StreamTap, Tapped};
use crate::bus::BusMessage;
use crate::handover::{self, Handover, Offered};
use state::{FollowUp, StateSettings, Tracking};
use tracker::PresenceTracker;

/// The most payloads handled in one pipeline.
pub const BATCH: usize = 512;

/// What bounds the hub loop's work (SPEC section 5, "Bounded work").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Larger payloads are refused before parsing (`hub.max_payload_bytes`).
    pub max_payload_bytes: usize,
    /// The most (channel, agent) presences tracked for offline announcements
    /// (`hub.max_tracked_presences`).
    pub max_tracked_presences: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1_048_576,
            max_tracked_presences: 100_000,
        }
    }
}

/// The hub loop and what it needs.
pub struct HubLoop {
    store: Arc<dyn Store>,
    keys: Keys,
    settings: StateSettings,
    limiter: RateLimiter,
    metrics: Arc<Metrics>,
    /// Each bridge's way in: its queue while this instance runs it, kept for a takeover while
    /// another does.
    bridges: Vec<Arc<Handover>>,
    bounds: Bounds,
    /// When each tracked presence expires unless refreshed.
    presences: PresenceTracker,
    /// The agent API's streams, fed every event read; `None` when the API is off.
    tap: Option<StreamTap>,
}

/// One payload that parsed, on its way through a batch.
struct Parsed {
    /// Its name on every instance (handover marks, refusals).
    id: EventId,
    source: Source,
    inbound: Inbound,
    received_at: Instant,
    /// When the event is an agent's relayable action: the index of its rate-limit op in the
    /// batch, the action, and the agent.
    rate_check: Option<(usize, Action, String)>,
}

impl HubLoop {
    pub fn new(
        store: Arc<dyn Store>,
        keys: Keys,
        settings: StateSettings,
        limiter: RateLimiter,
        metrics: Arc<Metrics>,
        bridges: Vec<Arc<Handover>>,
    ) -> Self {
        Self {
            store,
            keys,
            settings,
            limiter,
            metrics,
            bridges,
            bounds: Bounds::default(),
            presences: PresenceTracker::new(Bounds::default().max_tracked_presences),
            tap: None,
        }
    }

    /// The same loop with other bounds than the defaults.
    pub fn with_bounds(mut self, bounds: Bounds) -> Self {
        self.bounds = bounds;
        self.presences = PresenceTracker::new(bounds.max_tracked_presences);
        self
    }

    /// Feeds every event the loop reads to the agent API's streams as well.
    pub fn with_tap(mut self, tap: StreamTap) -> Self {
        self.tap = Some(tap);
        self
    }

    /// Runs until `shutdown`, then returns after the batch in hand.
    #[tracing::instrument(name = "hub_loop", skip_all)]
    pub async fn run(
        mut self,
        mut messages: mpsc::Receiver<BusMessage>,
        shutdown: CancellationToken,
    ) {
        let sweep_every = (self.settings.presence_ttl / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut sweep = tokio::time::interval(sweep_every);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                received = messages.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        return;
                    }
                    self.handle_batch(std::mem::take(&mut batch)).await;
                }
                _ = sweep.tick() => {
                    self.expire_presences().await;
                    for bridge in &self.bridges {
                        bridge.sweep();
                    }
                    self.report_queue_depths();
                }
            }
        }
    }

    async fn handle_batch(&mut self, batch: Vec<BusMessage>) {
        let now = now_millis();
        let mut ops = Vec::new();
        let mut follow_ups = Vec::new();
        let mut events = Vec::with_capacity(batch.len());
        let mut notices = Vec::new();
        for message in batch {
            if message.payload.len() > self.bounds.max_payload_bytes {
                notices.extend(self.refuse_oversized(&message));
                continue;
            }
            // Copied only while someone streams; the tap never waits.
            let tapped = self
                .tap
                .as_ref()
                .filter(|tap| tap.is_listened())
                .map(|_| (message.channel.clone(), message.payload.clone()));
            let Some(mut parsed) = self.read(message) else {
                continue;
            };
            if let (Some(tap), Some((channel, payload))) = (&self.tap, tapped) {
                tap.send(Tapped {
                    channel,
                    event_type: parsed.inbound.event.type_name().to_owned(),
                    payload,
                });
            }
            let plan = state::plan(&parsed.inbound.event, now, &self.keys, &self.settings);
            follow_ups.extend(plan.follow_ups_at(ops.len()));
            for kind in &plan.writes {
                self.metrics
                    .state_writes
                    .get_or_create(&KindLabel { kind })
                    .inc();
            }
            ops.extend(plan.ops);
            for tracking in plan.tracking {
                self.track(tracking);
            }
            if let Some((action, sender)) = self.outbound_action(&parsed) {
                ops.push(self.limiter.op(action, &sender));
                parsed.rate_check = Some((ops.len() - 1, action, sender));
            }
            events.push(parsed);
        }
        if events.is_empty() {
            self.publish_notices(notices).await;
            return;
        }

        let replies = self.run_state_ops(ops).await;
        let reply_is_one = |index: usize| replies.get(index).and_then(Reply::as_int) == Some(1);

        let mut publishes: Vec<Op> = follow_ups
            .into_iter()
            .filter_map(|follow_up| match follow_up {
                FollowUp::PresenceTransition {
                    reply,
                    channel_id,
                    agent_id,
                } if reply_is_one(reply) => {
                    Some(presence_op(channel_id, agent_id, PresenceStatus::Online))
                }
                FollowUp::FirstMessage {
                    reply,
                    channel_id,
                    agent_id,
                } if reply_is_one(reply) => Some(member_join_op(channel_id, agent_id)),
                _ => None,
            })
            .collect();

        for parsed in events {
            if let Some((index, action, sender)) = &parsed.rate_check {
                let count = replies.get(*index).and_then(Reply::as_int).unwrap_or(0);
                let limit = self.limiter.limit(*action, sender);
                if let Decision::Rejected { limit, .. } = decide(count, limit) {
                    self.metrics
                        .rate_limit_rejections
                        .get_or_create(&ActionDirection {
                            action: *action,
                            direction: Direction::Outbound,
                        })
                        .inc();
                    publishes.push(not_relayed_op(&parsed, *action, sender, limit));
                    // Not for a standby to relay should it take over (it kept the event).
                    publishes.push(handover::refusal_op(&self.keys, parsed.id));
                    continue;
                }
            }
            self.route(parsed);
        }

        publishes.extend(notices);
        self.publish_notices(publishes).await;
    }

    async fn publish_notices(&self, publishes: Vec<Op>) {
        if publishes.is_empty() {
            return;
        }
        if let Err(error) = self.store.exec(publishes).await {
            tracing::warn!(%error, "could not publish hub notices");
        }
    }

    /// Runs a batch's state ops in one round trip. An error reply (a key of the wrong type) costs
    /// only its own op, which then reads as `Nil`; the other events' replies are kept. When the
    /// store is unreachable every reply is `Nil`: state keeping waits for the next event, and
    /// relaying does not wait on Redis.
    async fn run_state_ops(&self, ops: Vec<Op>) -> Vec<Reply> {
        if ops.is_empty() {
            return Vec::new();
        }
        let outcomes = match self.store.exec_each(ops).await {
            Ok(outcomes) => outcomes,
            Err(error) => {
                self.metrics.state_errors.inc();
                tracing::warn!(%error, "state update failed; events are still relayed");
                return Vec::new();
            }
        };
        let mut failed = 0u64;
        let replies = outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|error| {
                    if failed == 0 {
                        tracing::warn!(%error, "a state update was refused; the other events' updates stand");
                    }
                    failed += 1;
                    Reply::Nil
                })
            })
            .collect();
        if failed > 0 {
            self.metrics.state_errors.inc_by(failed);
        }
        replies
    }

    /// Parses one payload; anything unreadable is logged at debug, counted, and skipped.
    fn read(&self, message: BusMessage) -> Option<Parsed> {
        let Some(source) = Source::from_channel(&message.channel) else {
            self.count_invalid("unknown_channel");
            return None;
        };
        let inbound = match parse(&source, &message.payload) {
            Ok(inbound) => inbound,
            Err(error) => {
                tracing::debug!(channel = %message.channel, %error, "unreadable payload skipped");
                self.count_invalid(match error {
                    hub_bridge_sdk::event::ParseError::NotJson(_) => "not_json",
                    hub_bridge_sdk::event::ParseError::NoType => "no_type",
                    hub_bridge_sdk::event::ParseError::Invalid { .. } => "invalid_event",
                    hub_bridge_sdk::event::ParseError::BadId { .. } => "bad_id",
                });
                return None;
            }
        };
        let type_name = inbound.event.type_name().to_owned();
        if let HubEvent::Unknown { .. } = inbound.event {
            self.metrics
                .events_in
                .get_or_create(&EventTypeLabel {
                    r#type: "unknown".to_owned(),
                })
                .inc();
            tracing::debug!(%type_name, "unknown event type ignored");
            return None;
        }
        self.metrics
            .events_in
            .get_or_create(&EventTypeLabel { r#type: type_name })
            .inc();
        Some(Parsed {
            id: EventId::of(&message.channel, &message.payload),
            source,
            inbound,
            received_at: message.received_at,
            rate_check: None,
        })
    }

    fn count_invalid(&self, reason: &'static str) {
        self.metrics
            .invalid_payloads
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The rate-limited action of an agent's event that bridges would relay (SPEC section 4).
    /// People's events were limited by their bridge on the way in.
    fn outbound_action(&self, parsed: &Parsed) -> Option<(Action, String)> {
        // Counted only where a bridge will relay it, so a standby instance does not use up the
        // agent's allowance.
        if !self.bridges.iter().any(|bridge| bridge.is_running()) {
            return None;
        }
        let (action, sender) = match &parsed.inbound.event {
            HubEvent::Channel(
                ChannelEvent::Message { message, .. } | ChannelEvent::ThreadMessage { message, .. },
            ) => (Action::Message, message.sender_id.as_str()),
            HubEvent::Channel(
                ChannelEvent::ReactionAdd { agent_id, .. }
                | ChannelEvent::ReactionRemove { agent_id, .. },
            ) => (Action::Reaction, agent_id.as_str()),
            HubEvent::Agent(event) => {
                let Source::Agent(recipient) = &parsed.source else {
                    return None;
                };
                let action = match event.kind {
                    AgentEventKind::DirectMessage => Action::Message,
                    AgentEventKind::Invite => Action::Invite,
                    _ => return None,
                };
                // Only what goes to a person on a platform is relayed.
                if !ExternalId::is_external(recipient) {
                    return None;
                }
                (action, event.data.from_agent.as_deref()?)
            }
            _ => return None,
        };
        // Unlimited senders (limit 0) cost no round-trip work at all.
        let limited = !ExternalId::is_external(sender) && self.limiter.limit(action, sender) > 0;
        limited.then(|| (action, sender.to_owned()))
    }

    fn route(&self, parsed: Parsed) {
        let delivery = Arc::new(Delivery {
            id: parsed.id,
            source: parsed.source,
            inbound: parsed.inbound,
            received_at: parsed.received_at,
        });
        for bridge in &self.bridges {
            match bridge.offer(&delivery) {
                Offered::Queued | Offered::Kept => {}
                Offered::Full => {
                    self.metrics
                        .bridge_queue_overflow
                        .get_or_create(&BridgeLabels {
                            bridge: bridge.bridge(),
                        })
                        .inc();
                    tracing::warn!(
                        bridge = bridge.bridge(),
                        event = delivery.inbound.event.type_name(),
                        "bridge queue full; event not relayed by this bridge"
                    );
                }
                // The bridge has stopped for good (fatal error); its status says why.
                Offered::Closed => {}
            }
        }
        self.report_queue_depths();
    }

    /// The offline transition, published once however many instances saw the expiry: every
    /// instance's hub loop tracks the same presences, and the first to publish claims it.
    fn offline_once_op(&self, channel_id: String, agent_id: String) -> Op {
        let claim_key = self.keys.offline_claim(&channel_id, &agent_id);
        let event = presence_event(channel_id, agent_id, PresenceStatus::Offline);
        Op::PublishOnce {
            claim_key,
            claim_value: "offline".to_owned(),
            // Instances sweep within a second of each other; a later real offline (after the
            // agent came back) must not be swallowed, so the claim is short.
            ttl: OFFLINE_CLAIM,
            channel: Source::Channel(event.channel_id().to_owned()).channel_name(),
            payload: Envelope::new(&event, now_millis()).to_json(),
        }
    }

    /// Sets the per-bridge depth gauges; called on routing and on every sweep tick, so a gauge
    /// is never more than a tick stale after a bridge drains its queue.
    fn report_queue_depths(&self) {
        for bridge in &self.bridges {
            let depth = bridge.queue_depth();
            self.metrics
                .bridge_queue_depth
                .get_or_create(&BridgeLabels {
                    bridge: bridge.bridge(),
                })
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
    }

    fn track(&mut self, tracking: Tracking) {
        match tracking {
            Tracking::Refreshed {
                channel_id,
                agent_id,
            } => {
                let deadline = Instant::now() + self.settings.presence_ttl;
                let evicted = self.presences.refresh((channel_id, agent_id), deadline);
                if evicted > 0 {
                    self.metrics
                        .presence_evictions
                        .inc_by(u64::try_from(evicted).unwrap_or(u64::MAX));
                    tracing::warn!(
                        evicted,
                        max = self.bounds.max_tracked_presences,
                        "presence tracker full; dropped the presences refreshed longest ago (no offline announcement for them)"
                    );
                }
            }
            Tracking::Gone {
                channel_id,
                agent_id,
            } => {
                self.presences.forget(&(channel_id, agent_id));
            }
        }
    }

    /// Publishes `offline` for every tracked presence whose key expired without a refresh.
    async fn expire_presences(&mut self) {
        let now = Instant::now();
        let due = self.presences.due(now);
        if due.is_empty() {
            return;
        }
        let ops = due
            .iter()
            .map(|(channel_id, agent_id)| Op::TtlMillis {
                key: self.keys.presence(channel_id, agent_id),
            })
            .collect();
        // On an outage the deadlines stay, and the next sweep asks again.
        let Ok(replies) = self.store.exec(ops).await else {
            return;
        };
        let mut publishes = Vec::new();
        for (who, reply) in due.into_iter().zip(replies) {
            match reply.as_int() {
                // Refreshed by someone else (another instance, the agent's own client).
                Some(ttl) if ttl > 0 => {
                    let remaining = Duration::from_millis(ttl.unsigned_abs());
                    self.presences.refresh(who, now + remaining);
                }
                Some(-2) => {
                    self.presences.forget(&who);
                    publishes.push(self.offline_once_op(who.0, who.1));
                }
                _ => {
                    self.presences.forget(&who);
                }
            }
        }
        if !publishes.is_empty() {
            if let Err(error) = self.store.exec(publishes).await {
                tracing::warn!(%error, "could not publish offline transitions");
            }
        }
    }
}

/// How long an offline transition's claim lasts.
const OFFLINE_CLAIM: Duration = Duration::from_secs(5);

/// Publishes a presence transition the hub loop observed.
fn presence_op(channel_id: String, agent_id: String, status: PresenceStatus) -> Op {
    channel_publish_op(&presence_event(channel_id, agent_id, status))
}

fn presence_event(channel_id: String, agent_id: String, status: PresenceStatus) -> ChannelEvent {
    ChannelEvent::Presence {
        channel_id,
        presence: Presence {
            agent_id,
            status,
            custom_status: None,
            avatar: None,
            last_seen: now_millis(),
        },
    }
}

fn member_join_op(channel_id: String, agent_id: String) -> Op {
    let event = ChannelEvent::MemberJoin {
        channel_id,
        member: hub_bridge_sdk::event::Member {
            agent_id,
            joined_at: now_millis(),
            role: "member".to_owned(),
        },
    };
    channel_publish_op(&event)
}

fn channel_publish_op(event: &ChannelEvent) -> Op {
    Op::Publish {
        channel: Source::Channel(event.channel_id().to_owned()).channel_name(),
        payload: Envelope::new(event, now_millis()).to_json(),
    }
}

/// Tells an agent that an event of theirs was not relayed, and why (SPEC section 4).
fn not_relayed_op(parsed: &Parsed, action: Action, agent_id: &str, limit: u32) -> Op {
    let event_type = parsed.inbound.event.type_name();
    let channel_id = match &parsed.inbound.event {
        HubEvent::Channel(event) => Some(event.channel_id().to_owned()),
        _ => None,
    };
    let where_ = channel_id
        .as_deref()
        .map(|id| format!(" in channel {id}"))
        .unwrap_or_default();
    let notice = AgentEvent {
        kind: AgentEventKind::Notification,
        data: AgentEventData {
            from_agent: Some("hub-bridge".to_owned()),
            content: Some(format!(
                "Not relayed to Telegram/Discord: your {event_type}{where_} is over the limit of \
                 {limit} {} per minute.",
                action.as_str()
            )),
            channel_id,
            action_required: None,
        },
        timestamp: now_millis(),
    };
    Op::Publish {
        channel: Source::Agent(agent_id.to_owned()).channel_name(),
        payload: notice.to_json(),
    }
}
