//! The Telegram bridge of hub-bridge: relays between hub channels and Telegram chats through the
//! Bot API (teloxide), with its own getUpdates loop for exactly-once inbound publishing and one
//! paced, ordered outbox per chat for everything sent.
//!
//! Telegram does not tell bots about deleted messages or about people typing, so those two never
//! travel from Telegram to the hub.

mod bridge;
pub mod config;
mod connector;
mod errors;
mod forums;
mod inbound;
mod render;
mod upgrade;
mod uploads;

pub use bridge::TelegramBridge;
pub use config::*;

/// This bridge's platform, as it names its people (`external:telegram:{id}`), its keys and metrics.
pub const PLATFORM: hub_bridge_sdk::Platform = hub_bridge_sdk::Platform::named("telegram");
