//! Test support shared by the integration tests: a private `redis-server` per test and local fakes
//! of the Telegram Bot API and of Discord (REST + gateway) that speak the real wire protocols, so
//! teloxide and serenity run unmodified against them.
//!
//! Each test binary uses only part of this module, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod fake_discord;
pub mod fake_telegram;
pub mod hub;
pub mod redis_server;
