//! The Discord bridge of hub-bridge: relays between hub channels and Discord channels, on
//! serenity with rustls.
//!
//! - [`bridge`]: the `Bridge` implementation that wires a run together;
//! - `gateway`: serenity's client and event handler, IDENTIFY spacing;
//! - `inbound`: Discord -> hub, and the catch-up after a gap;
//! - `connector`: hub -> Discord as the SDK's relay engine drives it (the engine owns routing,
//!   outboxes, the message map, stopped links); `posts`: the REST calls it is made of;
//!   `upgrade`: the previous release's queued jobs, read into the engine's; `uploads`: files as
//!   multipart posts, and people's attachments served for their media links;
//! - `rest`: REST calls that read Discord's rate-limit headers;
//! - `format`: mention rendering, splitting, quoting and people's names, as pure functions;
//! - `ids`: Discord ids read from untrusted text, and checked route ids (never 0);
//! - `shared`: what one run's parts share (caches, the bot's identity, the bridge's keys).

mod bridge;
pub mod config;
mod connector;
mod format;
mod gateway;
mod ids;
mod inbound;
mod posts;
mod rest;
mod shared;
mod upgrade;
mod uploads;

pub use bridge::DiscordBridge;
pub use config::*;

/// This bridge's platform, as it names its people (`external:discord:{id}`), its keys and metrics.
pub const PLATFORM: hub_bridge_sdk::Platform = hub_bridge_sdk::Platform::named("discord");
