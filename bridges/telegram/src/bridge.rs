//! The Telegram bridge's entry point: checks the token with getMe, then runs the getUpdates loop
//! ([`crate::inbound`]) and hands hub events to the relay engine, which drives Telegram through
//! [`crate::connector`], until the hub stops it.
//!
//! Everything a run creates (outboxes, typing tasks, the flood budget) lives and dies with that run; the
//! supervisor calls [`Bridge::run`] again with the same context after a transient failure, and
//! the hub events waiting in the context are still there.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use hub_bridge_sdk::relay::{Chat, Link, Links, Relay};
use hub_bridge_sdk::{Bridge, BridgeContext, BridgeError, HubHandle};
use teloxide::prelude::*;
use teloxide::types::Me;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::TelegramConfig;
use crate::connector::{is_group, Telegram};
use crate::errors::{is_unauthorized, Redactor};
use crate::inbound;
use hub_bridge_sdk::relay::budget::{FloodBudget, FloodLimits, Window};

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
    pub redactor: Redactor,
    pub relay: Relay<Telegram>,
    pub shutdown: CancellationToken,
}

impl Shared {
    /// Whether any link names this chat (relaying or stopped).
    pub fn is_linked(&self, chat: i64) -> bool {
        self.relay.links().is_linked(&chat_of(chat))
    }
}

/// The relay engine's name for a Telegram chat.
pub fn chat_of(chat: i64) -> Chat {
    Chat(chat.to_string())
}

impl TelegramBridge {
    pub fn new(config: TelegramConfig) -> Self {
        Self { config }
    }

    fn bot(&self) -> Result<Bot, BridgeError> {
        self.config
            .bot()
            .map_err(|error| BridgeError::Fatal(format!("telegram.api_url is not a URL: {error}")))
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
        let redactor = self.redactor();
        let connector = Telegram::new(
            bot.clone(),
            redactor.clone(),
            FloodBudget::new(
                FloodLimits {
                    global: vec![Window::per_second(self.config.sends_per_sec)],
                    chat: vec![Window::per_second(self.config.chat_sends_per_sec)],
                    group: vec![Window::per_minute(self.config.group_sends_per_min)],
                },
                is_group,
            ),
            ctx.hub.clone(),
            &self.config,
            shutdown.clone(),
        );
        let links = Links::new(
            "telegram",
            self.config
                .links
                .iter()
                .map(|link| Link::new(link.channel.clone(), chat_of(link.chat))),
        );
        let relay = Relay::start(
            Arc::new(connector),
            ctx.hub.clone(),
            links,
            tasks.clone(),
            shutdown.clone(),
        )
        .await?;
        let shared = Arc::new(Shared {
            me_id: me.id.0,
            me_username: me.username().to_owned(),
            bot,
            config: self.config.clone(),
            hub: ctx.hub.clone(),
            redactor,
            relay: relay.clone(),
            shutdown: shutdown.clone(),
        });
        let updates = tasks.spawn(inbound::run(shared.clone(), ctx.status.clone()));
        // Each side runs to its end and then stops the other: the update loop ends on the stop
        // (or fails), the delivery loop when the hub loop is gone or on the stop, after moving
        // what is still queued into the durable outboxes.
        let platform = async {
            let finished = updates.await;
            shutdown.cancel();
            match finished {
                Ok(result) => result,
                Err(error) => Err(BridgeError::Transient(format!(
                    "the update loop failed: {error}"
                ))),
            }
        };
        let hub = async {
            relay.deliver(&mut ctx.deliveries, &shutdown).await;
            shutdown.cancel();
        };
        let (result, ()) = tokio::join!(platform, hub);
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
