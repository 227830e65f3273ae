//! The service's Prometheus metrics, shared by the hub and the bridges so that every runtime
//! failure is both logged and counted (and can be alerted on even when recovery is automatic).
//!
//! Each family has one label set, a type here: a metric can only be labelled the one way, so
//! every caller fills the same labels.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::limits::Action;

/// `{type}`: a hub event's wire type (`channel.message`, or `unknown`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventTypeLabel {
    pub r#type: String,
}

/// `{reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// `{kind}`: which state key the hub loop updated.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// `{action, direction}`: a rate-limited action and which way it went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionDirection {
    pub action: Action,
    pub direction: Direction,
}

/// `{bridge}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BridgeLabels {
    pub bridge: &'static str,
}

/// `{bridge, type}`: a bridge and a hub event's wire type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BridgeEventType {
    pub bridge: &'static str,
    pub r#type: String,
}

/// `{bridge, direction}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BridgeDirection {
    pub bridge: &'static str,
    pub direction: Direction,
}

/// `{bridge, destination}`: one of a bridge's outboxes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BridgeDestination {
    pub bridge: &'static str,
    pub destination: String,
}

/// `{bridge, reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BridgeReason {
    pub bridge: &'static str,
    pub reason: &'static str,
}

/// `{bridge, kind}`: how a bridge run ended (`error`, `panic`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BridgeKind {
    pub bridge: &'static str,
    pub kind: &'static str,
}

/// Which way something travelled: from a platform to the hub, or from the hub to a platform.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Action {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Why a platform request or a store write was tried again (`retries_total{bridge, reason}`).
pub mod retry {
    /// An outbox's delivery failed in a way that may pass (a 5xx, a timeout, the store away); the
    /// outbox tries the job again.
    pub const DELIVERY_FAILED: &str = "delivery_failed";
    /// The store failed while a bridge handled a platform event; the event waits and is retried.
    pub const STORE_FAILED: &str = "store_failed";
    /// Telegram refused the formatted text; it is sent again as plain text.
    pub const PLAIN_TEXT_FALLBACK: &str = "plain_text_fallback";
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s: relay latency is sub-millisecond on loopback and seconds behind a 429.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// Every metric the service exports.
#[derive(Debug)]
pub struct Metrics {
    pub events_in: Family<EventTypeLabel, Counter>,
    pub invalid_payloads: Family<ReasonLabel, Counter>,
    pub state_writes: Family<KindLabel, Counter>,
    pub rate_limit_rejections: Family<ActionDirection, Counter>,
    pub bridge_queue_depth: Family<BridgeLabels, Gauge>,
    pub bridge_queue_overflow: Family<BridgeLabels, Counter>,
    pub subscriber_overflow: Counter,
    pub redis_reconnects: Counter,
    /// Durable Redis writes fewer than `redis.wait_replicas` replicas acknowledged within 1 s.
    pub redis_wait_shortfalls: Counter,
    pub relayed: Family<BridgeEventType, Counter>,
    pub published: Family<BridgeEventType, Counter>,
    pub relay_latency: Family<BridgeDirection, Histogram, fn() -> Histogram>,
    pub destination_queue_depth: Family<BridgeDestination, Gauge>,
    pub platform_429s: Family<BridgeLabels, Counter>,
    /// Retries, by bridge and [`retry`] reason.
    pub retries: Family<BridgeReason, Counter>,
    pub dead_letters: Family<BridgeLabels, Counter>,
    pub ignored: Family<BridgeReason, Counter>,
    /// Bridge runs that ended in an error or a panic (and were restarted), by bridge and kind.
    pub bridge_failures: Family<BridgeKind, Counter>,
    /// State updates of the hub loop that failed (an error reply, or the store unreachable).
    pub state_errors: Counter,
    /// Tracked presences dropped from the hub loop's bounded tracker to make room.
    pub presence_evictions: Counter,
    /// Jobs refused because their agent already held its share of a destination's outbox.
    pub outbox_share_refusals: Family<BridgeLabels, Counter>,
    /// Queued jobs taken into a newer one (a streamed answer's edits) or cancelled by one (a
    /// delete of a message not shown yet), so they cost no platform call.
    pub outbox_coalesced: Family<BridgeLabels, Counter>,
    /// Hub events a standby instance keeps for a bridge another instance runs, to relay those
    /// the other had not handed on should this one take over (SPEC section 6).
    pub standby_events: Family<BridgeLabels, Gauge>,
    /// Events a standby let go of, by reason: `age` (older than the window: the running instance
    /// has long handed them on) or `full` (the count bound, the oldest first: at a high rate the
    /// window holds fewer seconds, and only events the running instance had not handed on by a
    /// takeover would be missed).
    pub standby_dropped: Family<BridgeReason, Counter>,
    /// Takeovers of a bridge's lease by this instance, by how the handover mark was found:
    /// `seen` (among the kept events), `not_seen` (placed by its time), `none` (no mark yet).
    pub takeovers: Family<BridgeReason, Counter>,
    /// Kept events relayed on a takeover because the previous holder had not handed them on.
    pub replayed: Family<BridgeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            events_in: Family::default(),
            invalid_payloads: Family::default(),
            state_writes: Family::default(),
            rate_limit_rejections: Family::default(),
            bridge_queue_depth: Family::default(),
            bridge_queue_overflow: Family::default(),
            subscriber_overflow: Counter::default(),
            redis_reconnects: Counter::default(),
            redis_wait_shortfalls: Counter::default(),
            relayed: Family::default(),
            published: Family::default(),
            relay_latency: Family::new_with_constructor(latency_histogram),
            destination_queue_depth: Family::default(),
            platform_429s: Family::default(),
            retries: Family::default(),
            dead_letters: Family::default(),
            ignored: Family::default(),
            bridge_failures: Family::default(),
            state_errors: Counter::default(),
            presence_evictions: Counter::default(),
            outbox_share_refusals: Family::default(),
            outbox_coalesced: Family::default(),
            standby_events: Family::default(),
            standby_dropped: Family::default(),
            takeovers: Family::default(),
            replayed: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `hub_bridge` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("hub_bridge");
        registry.register(
            "events_in",
            "Hub events received by the hub loop, by type",
            self.events_in.clone(),
        );
        registry.register(
            "invalid_payloads",
            "Hub payloads that could not be read, by reason",
            self.invalid_payloads.clone(),
        );
        registry.register(
            "state_writes",
            "State-key updates made by the hub loop, by kind",
            self.state_writes.clone(),
        );
        registry.register(
            "rate_limit_rejections",
            "Actions refused by the per-sender rate limits, by action and direction",
            self.rate_limit_rejections.clone(),
        );
        registry.register(
            "bridge_queue_depth",
            "Hub events waiting for each bridge",
            self.bridge_queue_depth.clone(),
        );
        registry.register(
            "bridge_queue_overflow",
            "Hub events a bridge's full queue could not take",
            self.bridge_queue_overflow.clone(),
        );
        registry.register(
            "subscriber_overflow",
            "Pub/sub messages dropped because the hub loop fell behind",
            self.subscriber_overflow.clone(),
        );
        registry.register(
            "redis_reconnects",
            "Times the Redis subscriber was rebuilt or re-subscribed",
            self.redis_reconnects.clone(),
        );
        registry.register(
            "redis_wait_shortfalls",
            "Durable Redis writes fewer than redis.wait_replicas replicas acknowledged within 1 s",
            self.redis_wait_shortfalls.clone(),
        );
        registry.register(
            "relayed",
            "Hub events delivered to a platform, by bridge and type",
            self.relayed.clone(),
        );
        registry.register(
            "published",
            "Platform events published to the hub, by bridge and type",
            self.published.clone(),
        );
        registry.register(
            "relay_latency_seconds",
            "Time from receipt to the platform request or hub publish, by bridge and direction",
            self.relay_latency.clone(),
        );
        registry.register(
            "destination_queue_depth",
            "Sends waiting per destination chat",
            self.destination_queue_depth.clone(),
        );
        registry.register(
            "platform_429s",
            "Rate-limit answers (429) from a platform",
            self.platform_429s.clone(),
        );
        registry.register(
            "retries",
            "Platform requests and store writes tried again after a transient error, by bridge and reason",
            self.retries.clone(),
        );
        registry.register(
            "dead_letters",
            "Relays given up on a permanent error and kept in the dead-letter list",
            self.dead_letters.clone(),
        );
        registry.register(
            "ignored",
            "Platform updates ignored on purpose, by reason",
            self.ignored.clone(),
        );
        registry.register(
            "bridge_failures",
            "Bridge runs that ended in an error or a panic, by bridge and kind",
            self.bridge_failures.clone(),
        );
        registry.register(
            "state_errors",
            "State updates of the hub loop that failed (error reply or store unreachable)",
            self.state_errors.clone(),
        );
        registry.register(
            "presence_evictions",
            "Tracked presences dropped to keep the hub loop's tracker bounded",
            self.presence_evictions.clone(),
        );
        registry.register(
            "outbox_share_refusals",
            "Relays refused because their agent already held its share of a destination's outbox",
            self.outbox_share_refusals.clone(),
        );
        registry.register(
            "outbox_coalesced",
            "Queued relays taken into a newer one or cancelled by it, at no platform call",
            self.outbox_coalesced.clone(),
        );
        registry.register(
            "standby_events",
            "Hub events kept by a standby instance for a bridge another instance runs",
            self.standby_events.clone(),
        );
        registry.register(
            "standby_dropped",
            "Hub events a standby instance let go of, by reason (age, full)",
            self.standby_dropped.clone(),
        );
        registry.register(
            "takeovers",
            "Takeovers of a bridge by this instance, by how the handover mark was found",
            self.takeovers.clone(),
        );
        registry.register(
            "replayed",
            "Kept hub events relayed on a takeover that the previous holder had not handed on",
            self.replayed.clone(),
        );
    }
}

impl Metrics {
    /// A platform update a bridge ignored on purpose (own message, unlinked chat, ...).
    pub fn count_ignored(&self, bridge: &'static str, reason: &'static str) {
        self.ignored
            .get_or_create(&BridgeReason { bridge, reason })
            .inc();
    }

    /// Something a bridge tries again after a transient error; `reason` is one of [`retry`].
    pub fn count_retry(&self, bridge: &'static str, reason: &'static str) {
        self.retries
            .get_or_create(&BridgeReason { bridge, reason })
            .inc();
    }

    /// A platform event a bridge published to the hub.
    pub fn count_published(&self, bridge: &'static str, event_type: &str) {
        self.published
            .get_or_create(&BridgeEventType {
                bridge,
                r#type: event_type.to_owned(),
            })
            .inc();
    }

    /// A hub event a bridge delivered to its platform.
    pub fn count_relayed(&self, bridge: &'static str, event_type: &str) {
        self.relayed
            .get_or_create(&BridgeEventType {
                bridge,
                r#type: event_type.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    /// The exported names and label sets, as dashboards and alerts know them.
    #[test]
    fn label_sets_encode_with_their_names() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics
            .events_in
            .get_or_create(&EventTypeLabel {
                r#type: "channel.message".to_owned(),
            })
            .inc();
        metrics
            .rate_limit_rejections
            .get_or_create(&ActionDirection {
                action: Action::Reaction,
                direction: Direction::Inbound,
            })
            .inc();
        metrics.count_retry("telegram", retry::PLAIN_TEXT_FALLBACK);
        metrics.count_relayed("discord", "channel.message");
        metrics
            .relay_latency
            .get_or_create(&BridgeDirection {
                bridge: "telegram",
                direction: Direction::Outbound,
            })
            .observe(0.001);
        metrics
            .destination_queue_depth
            .get_or_create(&BridgeDestination {
                bridge: "discord",
                destination: "discord:7".to_owned(),
            })
            .set(2);
        metrics
            .bridge_failures
            .get_or_create(&BridgeKind {
                bridge: "discord",
                kind: "panic",
            })
            .inc();
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        for line in [
            r#"hub_bridge_events_in_total{type="channel.message"} 1"#,
            r#"hub_bridge_rate_limit_rejections_total{action="reaction",direction="inbound"} 1"#,
            r#"hub_bridge_retries_total{bridge="telegram",reason="plain_text_fallback"} 1"#,
            r#"hub_bridge_relayed_total{bridge="discord",type="channel.message"} 1"#,
            r#"hub_bridge_relay_latency_seconds_count{bridge="telegram",direction="outbound"} 1"#,
            r#"hub_bridge_destination_queue_depth{bridge="discord",destination="discord:7"} 2"#,
            r#"hub_bridge_bridge_failures_total{bridge="discord",kind="panic"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "`{line}` missing:\n{text}");
        }
    }
}
