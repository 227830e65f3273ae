//! The Telegram bridge's entry point. (Being built: until then it refuses to run, loudly.)

use futures_util::future::BoxFuture;
use hub_bridge_sdk::{Bridge, BridgeContext, BridgeError};

use crate::config::TelegramConfig;

/// Relays between hub channels and Telegram.
pub struct TelegramBridge {
    #[allow(dead_code)]
    config: TelegramConfig,
}

impl TelegramBridge {
    pub fn new(config: TelegramConfig) -> Self {
        Self { config }
    }
}

impl Bridge for TelegramBridge {
    fn name(&self) -> &'static str {
        "telegram"
    }

    fn check(&self) -> BoxFuture<'_, Result<String, BridgeError>> {
        Box::pin(async {
            Err(BridgeError::Fatal(
                "the telegram bridge is not built yet".into(),
            ))
        })
    }

    fn run<'a>(&'a self, _ctx: &'a mut BridgeContext) -> BoxFuture<'a, Result<(), BridgeError>> {
        Box::pin(async {
            Err(BridgeError::Fatal(
                "the telegram bridge is not built yet".into(),
            ))
        })
    }
}
