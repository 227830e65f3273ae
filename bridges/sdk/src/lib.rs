//! What every hub-bridge bridge builds on: the hub's event model ([`event`]), sender ids
//! ([`ids`]), the store operations ([`store`]), the fencing tokens of the bridges' leases
//! ([`fence`]), rate limits ([`limits`]), the bridge contract ([`bridge`]), how a bridge registers
//! with the service ([`registry`]), health and metrics, and the text utilities bridges share
//! ([`text`]).
//!
//! A bridge crate depends on this crate only, never on the hub or on another bridge.

pub mod bridge;
pub mod config;
pub mod dm;
pub mod emoji;
pub mod event;
pub mod fence;
pub mod guard;
pub mod handover;
pub mod health;
pub mod ids;
pub mod keys;
pub mod limits;
pub mod media;
pub mod metrics;
pub mod msgmap;
pub mod outbox;
pub mod registry;
pub mod relay;
pub mod store;
pub mod text;

pub use bridge::{
    AgentProfile, Bridge, BridgeContext, BridgeError, DeadLetter, Delivery, HubHandle,
};
pub use event::{ChannelEvent, ChannelMessage, HubEvent, Inbound, Source};
pub use fence::Fence;
pub use ids::{ExternalId, Platform};
pub use store::{Keys, Op, Reply, Store, StoreError};
