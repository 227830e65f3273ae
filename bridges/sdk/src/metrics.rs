//! The service's Prometheus metrics, shared by the hub and the bridges so that every runtime
//! failure is both logged and counted (and can be alerted on even when recovery is automatic).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label sets: a few `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s: relay latency is sub-millisecond on loopback and seconds behind a 429.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// Every metric the service exports.
#[derive(Debug)]
pub struct Metrics {
    pub events_in: Family<Labels, Counter>,
    pub invalid_payloads: Family<Labels, Counter>,
    pub state_writes: Family<Labels, Counter>,
    pub rate_limit_rejections: Family<Labels, Counter>,
    pub bridge_queue_depth: Family<Labels, Gauge>,
    pub bridge_queue_overflow: Family<Labels, Counter>,
    pub subscriber_overflow: Counter,
    pub redis_reconnects: Counter,
    pub relayed: Family<Labels, Counter>,
    pub published: Family<Labels, Counter>,
    pub relay_latency: Family<Labels, Histogram, fn() -> Histogram>,
    pub destination_queue_depth: Family<Labels, Gauge>,
    pub platform_429s: Family<Labels, Counter>,
    pub retries: Family<Labels, Counter>,
    pub dead_letters: Family<Labels, Counter>,
    pub ignored: Family<Labels, Counter>,
    /// Bridge runs that ended in an error or a panic (and were restarted), by bridge and kind.
    pub bridge_failures: Family<Labels, Counter>,
    /// State updates of the hub loop that failed (an error reply, or the store unreachable).
    pub state_errors: Counter,
    /// Tracked presences dropped from the hub loop's bounded tracker to make room.
    pub presence_evictions: Counter,
    /// Jobs refused because their agent already held its share of a destination's outbox.
    pub outbox_share_refusals: Family<Labels, Counter>,
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
            "Platform requests retried after a transient error",
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
    }
}

impl Metrics {
    /// A platform update a bridge ignored on purpose (own message, unlinked chat, ...).
    pub fn count_ignored(&self, bridge: &str, reason: &str) {
        self.ignored
            .get_or_create(&labels2(("bridge", bridge), ("reason", reason)))
            .inc();
    }

    /// A platform event a bridge published to the hub.
    pub fn count_published(&self, bridge: &str, event_type: &str) {
        self.published
            .get_or_create(&labels2(("bridge", bridge), ("type", event_type)))
            .inc();
    }

    /// A hub event a bridge delivered to its platform.
    pub fn count_relayed(&self, bridge: &str, event_type: &str) {
        self.relayed
            .get_or_create(&labels2(("bridge", bridge), ("type", event_type)))
            .inc();
    }
}

/// A one-label set.
pub fn label(name: &'static str, value: impl Into<String>) -> Labels {
    vec![(name, value.into())]
}

/// A two-label set.
pub fn labels2(
    first: (&'static str, impl Into<String>),
    second: (&'static str, impl Into<String>),
) -> Labels {
    vec![(first.0, first.1.into()), (second.0, second.1.into())]
}
