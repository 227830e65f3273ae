//! The Discord bridge's entry point. (Being built: until then it refuses to run, loudly.)

use futures_util::future::BoxFuture;
use hub_bridge_sdk::{Bridge, BridgeContext, BridgeError};

use crate::config::DiscordConfig;

/// Relays between hub channels and Discord.
pub struct DiscordBridge {
    #[allow(dead_code)]
    config: DiscordConfig,
}

impl DiscordBridge {
    pub fn new(config: DiscordConfig) -> Self {
        Self { config }
    }
}

impl Bridge for DiscordBridge {
    fn name(&self) -> &'static str {
        "discord"
    }

    fn check(&self) -> BoxFuture<'_, Result<String, BridgeError>> {
        Box::pin(async {
            Err(BridgeError::Fatal(
                "the discord bridge is not built yet".into(),
            ))
        })
    }

    fn run<'a>(&'a self, _ctx: &'a mut BridgeContext) -> BoxFuture<'a, Result<(), BridgeError>> {
        Box::pin(async {
            Err(BridgeError::Fatal(
                "the discord bridge is not built yet".into(),
            ))
        })
    }
}
