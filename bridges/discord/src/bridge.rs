//! The Discord bridge as the hub sees it: the [`Bridge`] implementation that wires one run
//! together. A run checks the token (`GET /users/@me`), starts the relay engine (which drives
//! Discord through [`crate::connector`] and resumes what an earlier run left queued), the inbound
//! processor and serenity's gateway client, and hands the hub's deliveries to the engine until
//! `ctx.shutdown`; then it stops everything it started, so `run` can be called again with the
//! same context.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use hub_bridge_sdk::relay::{Chat, Link, Links, Relay};
use hub_bridge_sdk::{Bridge, BridgeContext, BridgeError};
use serde_json::Value;
use serenity::http::{LightMethod, Route};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{DiscordConfig, WebhookRef};
use crate::connector::Discord;
use crate::gateway::{self, Handler, IdentifyGate};
use crate::inbound::{Cursors, Inbound};
use crate::rest::{Rest, RestError};
use crate::shared::Shared;

/// Gateway events buffered between serenity's handlers and the inbound processor.
const EVENT_QUEUE: usize = 4096;
/// How long a stopping run waits for its outbox workers and processor.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Relays between hub channels and Discord.
pub struct DiscordBridge {
    config: DiscordConfig,
    rest: Arc<Rest>,
    /// When this process last started a gateway client (IDENTIFY spacing across runs).
    last_identify: Mutex<Option<Instant>>,
    /// Where each linked channel's catch-up starts, kept across runs.
    last_seen: Cursors,
}

impl DiscordBridge {
    pub fn new(config: DiscordConfig) -> Self {
        let rest = Arc::new(Rest::new(config.token.expose(), &config.api_url));
        Self {
            config,
            rest,
            last_identify: Mutex::new(None),
            last_seen: Cursors::default(),
        }
    }

    /// The configured links, each with its webhook when it has one.
    fn links(&self) -> Vec<(Link, Option<WebhookRef>)> {
        self.config
            .links
            .iter()
            .filter_map(|link| {
                let channel = crate::ids::parse(&link.discord_channel)?;
                let chat = Chat(channel.to_string());
                Some((Link::new(link.channel.clone(), chat), link.webhook()))
            })
            .collect()
    }

    /// `GET /users/@me`: who the bot is; a 401 means the token is wrong.
    async fn whoami(&self) -> Result<(u64, String), BridgeError> {
        let me: Result<Value, RestError> = self
            .rest
            .json(LightMethod::Get, Route::UserMe, &[], None, "get:me")
            .await;
        match me {
            Ok(me) => {
                let id = me
                    .get("id")
                    .and_then(Value::as_str)
                    .and_then(crate::ids::parse)
                    .ok_or_else(|| {
                        BridgeError::Transient("GET /users/@me answered without an id".to_owned())
                    })?;
                let name = me
                    .get("username")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned();
                Ok((id, name))
            }
            Err(RestError::Status { status: 401, .. }) => Err(BridgeError::Unauthorized {
                platform: "discord",
                detail: "GET /users/@me answered 401: the token is wrong or revoked".to_owned(),
            }),
            Err(error) => Err(BridgeError::Transient(format!(
                "GET /users/@me failed: {error}"
            ))),
        }
    }
}

impl DiscordBridge {
    /// The relay engine over this run's connector, started with what a stopped run (or a crash)
    /// left ([`Relay::start`]).
    async fn start_relay(
        &self,
        shared: &Arc<Shared>,
        ctx: &BridgeContext,
        tasks: &TaskTracker,
        stop: &CancellationToken,
    ) -> Result<Relay<Discord>, BridgeError> {
        let links = self.links();
        let webhooks = links
            .iter()
            .filter_map(|(link, hook)| Some((link.clone(), hook.clone()?)))
            .collect();
        let connector = Discord::new(shared.clone(), webhooks, &self.config, stop.clone());
        Relay::start(
            Arc::new(connector),
            ctx.hub.clone(),
            Links::new("discord", links.into_iter().map(|(link, _)| link)),
            tasks.clone(),
            stop.clone(),
        )
        .await
    }
}

impl Bridge for DiscordBridge {
    fn name(&self) -> &'static str {
        "discord"
    }

    fn check(&self) -> BoxFuture<'_, Result<String, BridgeError>> {
        Box::pin(async move {
            let (id, name) = self.whoami().await?;
            Ok(format!("bot {name} (id {id})"))
        })
    }

    #[tracing::instrument(name = "discord", skip_all)]
    fn run<'a>(&'a self, ctx: &'a mut BridgeContext) -> BoxFuture<'a, Result<(), BridgeError>> {
        Box::pin(async move {
            ctx.status.not_ready("connecting to Discord");
            let (bot_id, bot_name) = self.whoami().await?;
            let shared = Arc::new(Shared::new(
                &self.config,
                self.rest.clone(),
                ctx.hub.clone(),
            ));
            shared.set_bot_id(bot_id);

            let stop = ctx.shutdown.child_token();
            let tasks = TaskTracker::new();
            let relay = self.start_relay(&shared, ctx, &tasks, &stop).await?;
            let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
            let inbound = Inbound::new(
                shared.clone(),
                relay.clone(),
                stop.clone(),
                self.last_seen.clone(),
            );
            let mut inbound = tasks.spawn(inbound.run(events_rx));

            let gate = IdentifyGate {
                store: ctx.hub.store(),
                key: shared.keys().identify(),
                last_start: &self.last_identify,
            };
            let status = ctx.status.clone();
            let gateway = gateway::run(
                &self.rest,
                self.config.token.expose(),
                Handler::new(events),
                &gate,
                &stop,
                &status,
                &bot_name,
            );
            // Each side runs to its end and then stops the other: the platform side on the stop
            // (or a failure), the delivery loop when the hub loop is gone or on the stop, after
            // moving what is still queued into the durable outboxes.
            let platform = async {
                let result = tokio::select! {
                    result = gateway => result,
                    // The inbound processor ends only with the run; if it ends before, Discord
                    // messages would no longer reach the hub: the run fails so the supervisor
                    // restarts it (and `/readyz` shows it meanwhile).
                    ended = &mut inbound => {
                        if stop.is_cancelled() {
                            Ok(())
                        } else {
                            Err(BridgeError::Transient(match ended {
                                Ok(()) => "the Discord inbound processor stopped".to_owned(),
                                Err(error) => format!("the Discord inbound processor died: {error}"),
                            }))
                        }
                    }
                };
                stop.cancel();
                result
            };
            let hub = async {
                relay.deliver(&mut ctx.deliveries, &stop).await;
                stop.cancel();
            };
            let (result, ()) = tokio::join!(platform, hub);

            stop.cancel();
            tasks.close();
            if tokio::time::timeout(STOP_GRACE, tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!("Discord bridge tasks still running after {STOP_GRACE:?}");
            }
            ctx.status.not_ready(match &result {
                Ok(()) => "stopped",
                Err(_) => "stopped after an error",
            });
            result
        })
    }
}
