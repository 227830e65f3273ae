//! Test support shared by hub-bridge's integration tests and its benchmark: a private
//! `redis-server` per test, started on a free loopback port (and killed, restarted or made to refuse
//! writes for outage tests), fakes of the Telegram Bot API and of Discord (REST and gateway) that
//! speak the real wire protocols, so teloxide and serenity run against them unmodified, and a spy
//! on the hub's pub/sub traffic, and the service as a process of its own to kill, pause or restart. Nothing here touches the network beyond loopback or a Redis on
//! 6379. The fakes' selftests (`testkit/tests/`) prove each fake against its unmodified client.

pub mod fake_discord;
pub mod fake_telegram;
pub mod hub;
pub mod numbered;
pub mod process;
pub mod redis_server;
