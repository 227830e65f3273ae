//! The Telegram bridge's entry point: checks the token with getMe, then runs the getUpdates loop
//! ([`crate::inbound`]) and the delivery loop that feeds the per-chat outboxes
//! ([`crate::outbound`]) until the hub stops it.
//!
//! Everything a run creates (outboxes, typing tasks, the pacer) lives and dies with that run; the
//! supervisor calls [`Bridge::run`] again with the same context after a transient failure, and
//! the hub events waiting in the context are still there.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use hub_bridge_sdk::guard::handle_event;
use hub_bridge_sdk::msgmap::MessageMap;
use hub_bridge_sdk::outbox::Outboxes;
use hub_bridge_sdk::{Bridge, BridgeContext, BridgeError, HubHandle};
use teloxide::prelude::*;
use teloxide::types::Me;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::TelegramConfig;
use crate::errors::{is_unauthorized, Redactor};
use crate::forums::Forums;
use crate::links::Links;
use crate::outbound::{dispatch, Courier};
use crate::pacing::{Limits, Pacer};
use crate::typing::Typing;
use crate::{inbound, outbound};

/// How long a stopping run waits for its tasks (requests in flight) before it returns anyway.
const DRAIN: Duration = Duration::from_secs(5);

/// Relays between hub channels and Telegram.
pub struct TelegramBridge {
    config: TelegramConfig,
}

/// What one run's tasks share.
pub(crate) struct Shared {
    pub bot: Bot,
    pub me_id: u64,
    pub me_username: String,
    pub config: TelegramConfig,
    pub hub: HubHandle,
    pub map: MessageMap,
    pub links: Links,
    pub redactor: Redactor,
    pub pacer: Pacer,
    pub typing: Typing,
    pub forums: Forums,
    /// Cancelled when the run ends.
    pub shutdown: CancellationToken,
}

impl TelegramBridge {
    pub fn new(config: TelegramConfig) -> Self {
        Self { config }
    }

    fn bot(&self) -> Result<Bot, BridgeError> {
        let url = reqwest::Url::parse(&self.config.api_url).map_err(|error| {
            BridgeError::Fatal(format!("telegram.api_url is not a URL: {error}"))
        })?;
        Ok(Bot::new(self.config.token.expose()).set_api_url(url))
    }

    fn redactor(&self) -> Redactor {
        Redactor::new(self.config.token.expose())
    }

    async fn get_me(&self, bot: &Bot) -> Result<Me, BridgeError> {
        bot.get_me().await.map_err(|error| {
            if is_unauthorized(&error) {
                BridgeError::Unauthorized {
                    platform: "telegram",
                    detail: "getMe: the bot token was rejected".to_owned(),
                }
            } else {
                BridgeError::Transient(format!(
                    "getMe failed: {}",
                    self.redactor().describe(&error)
                ))
            }
        })
    }

    async fn relay(&self, ctx: &mut BridgeContext, me: Me, bot: Bot) -> Result<(), BridgeError> {
        let tasks = TaskTracker::new();
        let shutdown = ctx.shutdown.child_token();
        let links = Links::new(&self.config.links);
        if let Err(error) = links.load_stopped(&ctx.hub).await {
            tracing::warn!(%error, "could not read the stopped links; relaying every configured link");
        }
        let redactor = self.redactor();
        let shared = Arc::new(Shared {
            typing: Typing::new(
                bot.clone(),
                redactor.clone(),
                tasks.clone(),
                shutdown.clone(),
            ),
            me_id: me.id.0,
            me_username: me.username().to_owned(),
            bot,
            config: self.config.clone(),
            map: MessageMap::new(&ctx.hub),
            hub: ctx.hub.clone(),
            links,
            redactor,
            pacer: Pacer::new(Limits {
                per_chat_per_sec: self.config.chat_sends_per_sec,
                per_group_per_min: self.config.group_sends_per_min,
                global_per_sec: self.config.sends_per_sec,
            }),
            forums: Forums::default(),
            shutdown: shutdown.clone(),
        });
        let courier = Arc::new(Courier {
            shared: shared.clone(),
        });
        let outboxes: Outboxes<outbound::Job> = Outboxes::durable(
            "telegram",
            courier,
            ctx.hub.clone(),
            tasks.clone(),
            shutdown.clone(),
        );
        // What an earlier run (or a crashed instance) left queued goes first.
        if let Err(error) = outboxes.recover().await {
            tracing::warn!(%error, "could not read the relays an earlier run left queued");
        }
        let mut updates = tasks.spawn(inbound::run(
            shared.clone(),
            outboxes.clone(),
            ctx.status.clone(),
        ));
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                finished = &mut updates => break match finished {
                    Ok(result) => result,
                    Err(error) => Err(BridgeError::Transient(format!("the update loop failed: {error}"))),
                },
                delivery = ctx.deliveries.recv() => match delivery {
                    // One event that makes routing panic is counted and skipped; the next is
                    // routed (SPEC section 9).
                    Some(delivery) => {
                        let routed = dispatch(&shared, &outboxes, &delivery);
                        handle_event(ctx.hub.metrics(), "telegram", "hub event", routed).await;
                    }
                    // The hub loop is gone: the service is stopping.
                    None => break Ok(()),
                },
            }
        };
        shutdown.cancel();
        tasks.close();
        if tokio::time::timeout(DRAIN, tasks.wait()).await.is_err() {
            tracing::warn!("Telegram requests still running after the drain period");
        }
        result
    }
}

impl Bridge for TelegramBridge {
    fn name(&self) -> &'static str {
        "telegram"
    }

    fn check(&self) -> BoxFuture<'_, Result<String, BridgeError>> {
        Box::pin(async {
            let bot = self.bot()?;
            let me = self.get_me(&bot).await?;
            Ok(format!("bot @{} (id {})", me.username(), me.id.0))
        })
    }

    #[tracing::instrument(name = "telegram", skip_all)]
    fn run<'a>(&'a self, ctx: &'a mut BridgeContext) -> BoxFuture<'a, Result<(), BridgeError>> {
        Box::pin(async move {
            let bot = self.bot()?;
            ctx.status.not_ready("connecting to the Telegram Bot API");
            let me = tokio::select! {
                _ = ctx.shutdown.cancelled() => return Ok(()),
                me = self.get_me(&bot) => me?,
            };
            tracing::info!(bot = %me.username(), chats = self.config.links.len(), "Telegram bridge connected");
            self.relay(ctx, me, bot).await
        })
    }
}
