//! The `[telegram]` config section: the bot token, where the Bot API is, which chats mirror which
//! hub channels, where private messages go, and how fast the bridge may send. The section registers
//! the bridge with the service ([`BridgeConfig`]).

use std::sync::Arc;

use hub_bridge_sdk::config::{check_http_url, check_token, ConfigIssue, Secret};
use hub_bridge_sdk::media::MediaSource;
use hub_bridge_sdk::registry::BridgeConfig;
use hub_bridge_sdk::Bridge;
use serde::Deserialize;
use teloxide::Bot;

use crate::uploads::TelegramFiles;
use crate::TelegramBridge;

/// `[telegram]`: the bot, where its Bot API is, and which chats mirror which hub channels.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramConfig {
    /// The bot token from @BotFather (required; never logged).
    pub token: Secret,
    /// The Bot API server (default `https://api.telegram.org`): a local `telegram-bot-api`, or a
    /// test fake.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// Hub channel <-> Telegram chat links (N:M allowed).
    #[serde(default)]
    pub links: Vec<TelegramLink>,
    /// The agent a private message to the bot goes to until the person picks one with `/dm`.
    #[serde(default)]
    pub dm_agent: Option<String>,
    /// getUpdates long-poll timeout in seconds (default 10; must stay below the HTTP client's 17 s).
    #[serde(default = "default_poll_timeout")]
    pub poll_timeout_secs: u32,
    /// Messages the bridge sends to one chat per second (default 1, Telegram's per-chat limit).
    #[serde(default = "default_chat_sends_per_sec")]
    pub chat_sends_per_sec: u32,
    /// Messages the bridge sends to one group per minute (default 20, Telegram's group limit).
    #[serde(default = "default_group_sends_per_min")]
    pub group_sends_per_min: u32,
    /// Messages the bridge sends to all chats together per second (default 30, Telegram's bot
    /// limit).
    #[serde(default = "default_sends_per_sec")]
    pub sends_per_sec: u32,
    /// The most Telegram messages one hub message becomes (default 10, at least 1): a longer
    /// message is cut, and its last message says how many characters were left out. The list of
    /// a message's attachments comes on top.
    #[serde(default = "default_max_parts")]
    pub max_parts: usize,
    /// How far apart edits of one message go out in a private chat, in milliseconds (default
    /// 1000): a streamed answer is edited in place at this pace, however fast the agent writes.
    #[serde(default = "default_edit_cadence_private_ms")]
    pub edit_cadence_private_ms: u64,
    /// The same for groups (default 3000: Telegram allows a group about 20 messages and edits a
    /// minute).
    #[serde(default = "default_edit_cadence_group_ms")]
    pub edit_cadence_group_ms: u64,
}

impl TelegramConfig {
    /// The bot client of this section: its token, at `api_url`; the error says why `api_url` is
    /// not a URL.
    pub(crate) fn bot(&self) -> Result<Bot, String> {
        let url = reqwest::Url::parse(&self.api_url).map_err(|error| error.to_string())?;
        Ok(Bot::new(self.token.expose()).set_api_url(url))
    }

    /// The section with `token`, `api_url` and `links`, everything else as a TOML file that
    /// leaves it out gets it (embedders, tests).
    pub fn new(token: Secret, api_url: impl Into<String>, links: Vec<TelegramLink>) -> Self {
        Self {
            token,
            api_url: api_url.into(),
            links,
            dm_agent: None,
            poll_timeout_secs: default_poll_timeout(),
            chat_sends_per_sec: default_chat_sends_per_sec(),
            group_sends_per_min: default_group_sends_per_min(),
            sends_per_sec: default_sends_per_sec(),
            max_parts: default_max_parts(),
            edit_cadence_private_ms: default_edit_cadence_private_ms(),
            edit_cadence_group_ms: default_edit_cadence_group_ms(),
        }
    }
}

/// One `[[telegram.links]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramLink {
    /// The hub channel id.
    pub channel: String,
    /// The Telegram chat id (groups and supergroups are negative, e.g. `-1001234567890`).
    pub chat: i64,
}

fn default_api_url() -> String {
    "https://api.telegram.org".to_owned()
}

fn default_poll_timeout() -> u32 {
    10
}

fn default_chat_sends_per_sec() -> u32 {
    1
}

fn default_group_sends_per_min() -> u32 {
    20
}

fn default_sends_per_sec() -> u32 {
    30
}

fn default_max_parts() -> usize {
    10
}

fn default_edit_cadence_private_ms() -> u64 {
    1000
}

fn default_edit_cadence_group_ms() -> u64 {
    3000
}

impl BridgeConfig for TelegramConfig {
    const SECTION: &'static str = "telegram";

    /// Cross-field checks; the key in the issue is relative to `[telegram]`.
    fn validate(&self) -> Result<(), ConfigIssue> {
        check_token("token", &self.token)?;
        check_http_url("api_url", &self.api_url)?;
        if !(1..=16).contains(&self.poll_timeout_secs) {
            return Err(ConfigIssue::new(
                "poll_timeout_secs",
                "must be between 1 and 16 seconds (the HTTP client gives up after 17)",
            ));
        }
        for (key, value) in [
            ("chat_sends_per_sec", self.chat_sends_per_sec),
            ("group_sends_per_min", self.group_sends_per_min),
            ("sends_per_sec", self.sends_per_sec),
        ] {
            if value == 0 {
                return Err(ConfigIssue::new(
                    key,
                    "must be at least 1 (Telegram has no unlimited rate)",
                ));
            }
        }
        if self.max_parts == 0 {
            return Err(ConfigIssue::new(
                "max_parts",
                "must be at least 1 (a message needs one part to be shown)",
            ));
        }
        for (index, link) in self.links.iter().enumerate() {
            if link.channel.trim().is_empty() {
                return Err(ConfigIssue::new(
                    format!("links[{index}].channel"),
                    "must not be empty",
                ));
            }
            if link.chat == 0 {
                return Err(ConfigIssue::new(
                    format!("links[{index}].chat"),
                    "must be a Telegram chat id",
                ));
            }
            if self.links[..index].contains(link) {
                return Err(ConfigIssue::new(
                    format!("links[{index}]"),
                    format!(
                        "duplicate link: channel {} and chat {} are already linked",
                        link.channel, link.chat
                    ),
                ));
            }
        }
        Ok(())
    }

    fn bridge(&self) -> Box<dyn Bridge> {
        Box::new(TelegramBridge::new(self.clone()))
    }

    fn media_source(&self) -> Option<Arc<dyn MediaSource>> {
        // `validate` checked the URL; a section that was not validated serves no files.
        let bot = self.bot().ok()?;
        Some(Arc::new(TelegramFiles { bot }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> TelegramConfig {
        let mut json = serde_json::json!({"token": "123:ABC"});
        if let (Some(json), Some(extra)) = (json.as_object_mut(), extra.as_object()) {
            json.extend(extra.clone());
        }
        serde_json::from_value(json).expect("a config")
    }

    #[test]
    fn max_parts_defaults_to_ten_and_must_be_positive() {
        let default = config(serde_json::json!({}));
        assert_eq!(default.max_parts, 10);
        assert!(default.validate().is_ok());
        assert!(config(serde_json::json!({"max_parts": 1}))
            .validate()
            .is_ok());
        let error = config(serde_json::json!({"max_parts": 0}))
            .validate()
            .expect_err("zero parts");
        assert!(format!("{error:?}").contains("max_parts"), "{error:?}");
    }
}
