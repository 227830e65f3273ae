//! Assembles and runs the service: the bus, the hub loop, the supervised bridges and the HTTP
//! endpoints, all under one cancellation token with a bounded drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hub_bridge_sdk::health::Health;
use hub_bridge_sdk::limits::RateLimiter;
use hub_bridge_sdk::media::{FetchError, Media};
use hub_bridge_sdk::metrics::Metrics;
use hub_bridge_sdk::registry::Section;
use hub_bridge_sdk::{Bridge, BridgeContext, HubHandle, Keys};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{Api, ApiParts};
use crate::bus::embedded::{spawn_expiry_sweeper, EmbeddedBus};
use crate::bus::redis::{InvalidRedisUrl, RedisBus};
use crate::bus::Bus;
use crate::config::Config;
use crate::handover::Handover;
use crate::hub::state::StateSettings;
use crate::hub::{Bounds, HubLoop};
use crate::supervisor::supervise;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Redis(#[from] InvalidRedisUrl),
    #[error("cannot set up the media downloads: {0}")]
    Media(FetchError),
    #[error("cannot listen on {addr} (http.listen): {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started service.
pub struct Running {
    /// Where the HTTP endpoints actually listen (useful with port 0).
    pub http_addr: SocketAddr,
    pub health: Health,
    pub metrics: Arc<Metrics>,
    /// The bus the service runs on; tests and tools may subscribe or use its store.
    pub bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    grace: Duration,
}

impl Running {
    /// A token that stops the service when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits for shutdown, then for every task to finish within the grace period.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        self.tasks.close();
        if tokio::time::timeout(self.grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.grace, "tasks still running after the grace period; exiting anyway");
        }
    }

    /// Stops the service and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

/// The bridges whose sections are present in the config.
pub fn configured_bridges(config: &Config) -> Vec<Box<dyn Bridge>> {
    config.bridges.iter().map(Section::bridge).collect()
}

/// Starts every part of the service and returns once the HTTP endpoints listen.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let bridges = configured_bridges(&config);
    start_with(config, bridges).await
}

/// Starts the service with the given bridges instead of the configured ones (embedding, tests).
pub async fn start_with(
    config: Config,
    bridges: Vec<Box<dyn Bridge>>,
) -> Result<Running, StartError> {
    let (listener, http_addr) = bind_http(config.http.listen).await?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let health = Health::default();
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);

    let bus = open_bus(&config, &metrics, &health, &tasks, &shutdown)?;
    let store = bus.store();
    let keys = Keys::new(config.hub.key_prefix.clone());
    let limiter = RateLimiter::new(store.clone(), keys.clone(), config.limits.clone());
    let sources = config
        .bridges
        .iter()
        .filter_map(|section| Some((section.name(), section.media_source()?)))
        .collect();
    let mut media_settings = config.media_settings();
    if config.http.public_url.is_none() {
        media_settings.public_url = format!("http://{http_addr}");
    }
    let media = Media::new(media_settings, store.clone(), keys.clone(), sources)
        .map(Arc::new)
        .map_err(StartError::Media)?;
    let hub = HubHandle::new(
        store.clone(),
        keys.clone(),
        limiter.clone(),
        config.agents.clone(),
        metrics.clone(),
    )
    .with_media(media.clone());

    // With no bridge, no hub loop counts agents' limits: the agent API then counts them itself.
    let api_counts_limits = bridges.is_empty();
    let queues = spawn_bridges(bridges, &config, &hub, &health, &tasks, &shutdown);

    let settings = StateSettings {
        presence_ttl: Duration::from_secs(config.hub.presence_ttl_secs),
        ..StateSettings::default()
    };
    let api = Api::new(ApiParts {
        agents: config.agents.clone(),
        config: config.api.clone(),
        store: store.clone(),
        keys: keys.clone(),
        limiter: limiter.clone(),
        max_payload_bytes: config.hub.max_payload_bytes,
        counts_limits: api_counts_limits,
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
    });
    let messages = bus.subscribe(config.hub.subscriber_queue, &tasks, shutdown.clone());
    let bounds = Bounds {
        max_payload_bytes: config.hub.max_payload_bytes,
        max_tracked_presences: config.hub.max_tracked_presences,
    };
    let mut hub_loop =
        HubLoop::new(store, keys, settings, limiter, metrics.clone(), queues).with_bounds(bounds);
    if let Some(api) = &api {
        api.metrics().register(&mut registry);
        hub_loop = hub_loop.with_tap(api.tap());
        let agents: Vec<&str> = api.agents().collect();
        tracing::info!(?agents, "agent API enabled on /v1");
    }
    tasks.spawn(hub_loop.run(messages, shutdown.clone()));

    let mut app = crate::http::router(health.clone(), Arc::new(registry), media);
    if let Some(api) = api {
        app = app.merge(crate::api::router(api));
    }
    serve_http(listener, app, &tasks, &shutdown);
    tracing::info!(%http_addr, bus = if config.redis.is_configured() { "redis" } else { "embedded" }, "hub-bridge started");

    Ok(Running {
        http_addr,
        health,
        metrics,
        bus,
        shutdown,
        tasks,
        grace: Duration::from_secs(config.hub.shutdown_grace_secs),
    })
}

/// The bus the hub runs on: Redis when `redis.url` or `redis.sentinels` is set, else the
/// embedded in-process bus.
fn open_bus(
    config: &Config,
    metrics: &Arc<Metrics>,
    health: &Health,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<Arc<dyn Bus>, StartError> {
    Ok(if config.redis.is_configured() {
        Arc::new(RedisBus::from_config(
            &config.redis,
            metrics.clone(),
            health,
        )?)
    } else {
        let bus = EmbeddedBus::new(metrics.clone());
        spawn_expiry_sweeper(&bus, tasks, shutdown.clone());
        health.component("bus").ready("embedded in-process bus");
        Arc::new(bus)
    })
}

/// Starts each bridge under its supervisor, and returns the handovers the hub loop feeds them
/// through.
fn spawn_bridges(
    bridges: Vec<Box<dyn Bridge>>,
    config: &Config,
    hub: &HubHandle,
    health: &Health,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Vec<Arc<Handover>> {
    let instance_id = uuid::Uuid::new_v4().to_string();
    let mut handovers = Vec::new();
    for bridge in bridges {
        let (sender, deliveries) = mpsc::channel(config.hub.bridge_queue);
        let handover = Arc::new(Handover::new(bridge.name(), sender, hub.metrics_arc()));
        handovers.push(handover.clone());
        let ctx = BridgeContext {
            deliveries,
            hub: hub.clone(),
            shutdown: shutdown.child_token(),
            status: health.component(bridge.name()),
        };
        tasks.spawn(supervise(
            bridge,
            ctx,
            instance_id.clone(),
            shutdown.clone(),
            handover,
            Duration::from_secs(config.ha.lease_ttl_secs),
        ));
    }
    handovers
}

/// Binds `listen`, first of all: a port in use fails the start at once, and the bound address
/// (with port 0, the one the system chose) is the default base of media links.
async fn bind_http(
    listen: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let listen_error = |source| StartError::Listen {
        addr: listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(listen_error)?;
    let http_addr = listener.local_addr().map_err(listen_error)?;
    Ok((listener, http_addr))
}

/// Serves `app` on `listener` until shutdown.
fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let http_shutdown = shutdown.clone();
    tasks.spawn(async move {
        let serve = axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await });
        if let Err(error) = serve.await {
            tracing::error!(%error, "HTTP server failed");
        }
    });
}
