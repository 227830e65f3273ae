//! hub-bridge: relays a Redis-backed chat hub for AI agents to Telegram and Discord.
//!
//! This crate is the hub core: [`config`], the [`bus`] (Redis or embedded), the [`hub`] loop with
//! its state keeping, the bridge [`supervisor`] and the [`handover`] of a bridge between
//! instances, the operator's [`http`] endpoints, the agent
//! [`api`] (`/v1`), the `check`
//! command ([`check`]) and the [`service`] that assembles them. Bridges live in `bridges/` and are
//! seen only through `hub_bridge_sdk::Bridge`; [`bridges`] is the one place that names them.

pub mod api;
pub mod bridges;
pub mod bus;
pub mod check;
pub mod config;
pub mod handover;
pub mod http;
pub mod hub;
pub mod service;
pub mod supervisor;
