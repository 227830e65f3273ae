//! The telegram bridge of hub-bridge: relays between hub channels and Telegram chats.

mod bridge;
pub mod config;

pub use bridge::TelegramBridge;
pub use config::*;
