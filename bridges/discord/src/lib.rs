//! The discord bridge of hub-bridge: relays between hub channels and Discord chats.

mod bridge;
pub mod config;

pub use bridge::DiscordBridge;
pub use config::*;
