//! The `[discord]` config section: the bot token, where Discord's API is, which channels mirror
//! which hub channels (with their webhooks), and where DMs go. The section registers the bridge with
//! the service ([`BridgeConfig`]).

use std::num::NonZeroU64;
use std::sync::Arc;

use hub_bridge_sdk::config::{check_http_url, check_token, ConfigIssue, Secret};
use hub_bridge_sdk::media::MediaSource;
use hub_bridge_sdk::registry::BridgeConfig;
use hub_bridge_sdk::Bridge;
use serde::Deserialize;

use crate::rest::Rest;
use crate::uploads::DiscordFiles;
use crate::DiscordBridge;

/// `[discord]`: the bot, where Discord's API is, and which channels mirror which hub channels.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscordConfig {
    /// The bot token (required; never logged).
    pub token: Secret,
    /// Discord's API base (default `https://discord.com`): a proxy or a test fake. REST, gateway
    /// discovery and webhooks all go there.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// Hub channel <-> Discord channel links (N:M allowed).
    #[serde(default)]
    pub links: Vec<DiscordLink>,
    /// The agent a DM to the bot goes to until the person picks one with `/dm`.
    #[serde(default)]
    pub dm_agent: Option<String>,
    /// The most Discord messages one hub message becomes (default 10); a longer one is cut after
    /// the last with a note saying how much was left out (SPEC section 5, "Bounded work").
    #[serde(default = "default_max_parts")]
    pub max_parts: usize,
    /// How far apart edits of one message go out, in milliseconds (default 1000): a streamed
    /// answer is edited in place at this pace, however fast the agent writes.
    #[serde(default = "default_edit_cadence_ms")]
    pub edit_cadence_ms: u64,
}

impl DiscordConfig {
    /// The section with `token`, `api_url` and `links`, everything else as a TOML file that
    /// leaves it out gets it (embedders, tests).
    pub fn new(token: Secret, api_url: impl Into<String>, links: Vec<DiscordLink>) -> Self {
        Self {
            token,
            api_url: api_url.into(),
            links,
            dm_agent: None,
            max_parts: default_max_parts(),
            edit_cadence_ms: default_edit_cadence_ms(),
        }
    }
}

/// One `[[discord.links]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscordLink {
    /// The hub channel id.
    pub channel: String,
    /// The Discord channel id (a snowflake, as a string).
    pub discord_channel: String,
    /// A webhook of that channel, so agents appear with their own name and avatar (optional;
    /// it embeds a token, so it is never logged).
    #[serde(default)]
    pub webhook_url: Option<Secret>,
}

fn default_max_parts() -> usize {
    10
}

fn default_edit_cadence_ms() -> u64 {
    1000
}

fn default_api_url() -> String {
    "https://discord.com".to_owned()
}

/// A webhook's id and token, taken from its URL (`.../api/webhooks/{id}/{token}`). Both go into
/// request paths, so both are checked: the id is a non-zero number, the token is made of the
/// characters Discord's tokens use (`A-Z a-z 0-9 _ - .`), never `/`, `?`, `#` or `%`.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookRef {
    pub id: NonZeroU64,
    pub token: Secret,
}

impl std::fmt::Debug for WebhookRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookRef({}, ***)", self.id)
    }
}

impl DiscordLink {
    /// The webhook's id and token, when the link has a well-formed webhook URL.
    pub fn webhook(&self) -> Option<WebhookRef> {
        parse_webhook_url(self.webhook_url.as_ref()?.expose())
    }
}

/// Reads `https://host/api/webhooks/{id}/{token}` (any host: `api_url` applies to webhooks too).
pub fn parse_webhook_url(url: &str) -> Option<WebhookRef> {
    let (id, token) = webhook_parts(url)?;
    let id = NonZeroU64::new(crate::ids::parse(id)?)?;
    let token_ok = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && token != "."
        && token != "..";
    token_ok.then(|| WebhookRef {
        id,
        token: Secret::new(token),
    })
}

/// The id and token segments of a webhook URL, unchecked.
fn webhook_parts(url: &str) -> Option<(&str, &str)> {
    let path = url.split_once("/api/")?.1;
    let path = path.strip_prefix("v10/").unwrap_or(path);
    let mut parts = path.strip_prefix("webhooks/")?.split(['/', '?', '#']);
    Some((parts.next()?, parts.next().unwrap_or_default()))
}

impl BridgeConfig for DiscordConfig {
    const SECTION: &'static str = "discord";

    /// Cross-field checks; the key in the issue is relative to `[discord]`.
    fn validate(&self) -> Result<(), ConfigIssue> {
        check_token("token", &self.token)?;
        check_http_url("api_url", &self.api_url)?;
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
            if link
                .discord_channel
                .parse::<u64>()
                .map_or(true, |id| id == 0)
            {
                return Err(ConfigIssue::new(
                    format!("links[{index}].discord_channel"),
                    format!("`{}` is not a Discord channel id", link.discord_channel),
                ));
            }
            if let Some(url) = &link.webhook_url {
                let key = format!("links[{index}].webhook_url");
                // The URL embeds a token: the message describes it without quoting it.
                check_http_url(&key, url.expose())
                    .map_err(|_| ConfigIssue::new(&key, "is not an http(s) URL"))?;
                if webhook_parts(url.expose()).is_some_and(|(id, _)| id == "0") {
                    return Err(ConfigIssue::new(
                        key,
                        "webhook id 0 is not a Discord webhook id",
                    ));
                }
                if link.webhook().is_none() {
                    return Err(ConfigIssue::new(
                        key,
                        "must look like https://discord.com/api/webhooks/{id}/{token}",
                    ));
                }
            }
            let same = |other: &DiscordLink| {
                other.channel == link.channel && other.discord_channel == link.discord_channel
            };
            if self.links[..index].iter().any(same) {
                return Err(ConfigIssue::new(
                    format!("links[{index}]"),
                    format!(
                        "duplicate link: channel {} and Discord channel {} are already linked",
                        link.channel, link.discord_channel
                    ),
                ));
            }
        }
        Ok(())
    }

    fn bridge(&self) -> Box<dyn Bridge> {
        Box::new(DiscordBridge::new(self.clone()))
    }

    fn media_source(&self) -> Option<Arc<dyn MediaSource>> {
        let api_url = self.api_url.trim_end_matches('/');
        let media_cdn = if api_url == default_api_url() {
            "https://media.discordapp.net".to_owned()
        } else {
            api_url.to_owned()
        };
        Some(Arc::new(DiscordFiles {
            rest: Rest::new(self.token.expose(), &self.api_url),
            // A CDN that stalls fails the read instead of holding an agent's request for ever.
            cdn: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .read_timeout(std::time::Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
            media_cdn,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_parse_on_any_host() {
        let hook = parse_webhook_url("https://discord.com/api/webhooks/123/abc-DEF").unwrap();
        assert_eq!(hook.id.get(), 123);
        assert_eq!(hook.token.expose(), "abc-DEF");
        assert!(parse_webhook_url("http://127.0.0.1:9/api/v10/webhooks/5/t?wait=true").is_some());
        assert!(parse_webhook_url("https://discord.com/api/webhooks/x/abc").is_none());
        assert!(parse_webhook_url("https://discord.com/api/webhooks/1/").is_none());
    }

    #[test]
    fn webhook_ids_are_non_zero_and_tokens_cannot_reshape_a_path() {
        for bad in [
            "https://discord.com/api/webhooks/0/abc",
            "https://discord.com/api/webhooks/00/abc",
            "https://discord.com/api/webhooks/-1/abc",
            "https://discord.com/api/webhooks/1/..",
            "https://discord.com/api/webhooks/1/a%2Fb",
            "https://discord.com/api/webhooks/1/a b",
        ] {
            assert!(parse_webhook_url(bad).is_none(), "{bad}");
        }
    }

    fn config_with_webhook(url: &str) -> DiscordConfig {
        DiscordConfig {
            token: Secret::new("a-bot-token-that-is-long-enough"),
            api_url: default_api_url(),
            links: vec![DiscordLink {
                channel: "hub".to_owned(),
                discord_channel: "123".to_owned(),
                webhook_url: Some(Secret::new(url)),
            }],
            dm_agent: None,
            max_parts: default_max_parts(),
            edit_cadence_ms: default_edit_cadence_ms(),
        }
    }

    #[test]
    fn max_parts_defaults_to_ten_and_must_be_positive() {
        let mut config = config_with_webhook("https://discord.com/api/webhooks/1/token");
        assert_eq!(config.max_parts, 10);
        assert!(config.validate().is_ok());
        config.max_parts = 0;
        let issue = config.validate().unwrap_err();
        assert!(format!("{issue:?}").contains("max_parts"), "{issue:?}");
    }

    #[test]
    fn a_webhook_url_with_id_0_is_rejected_naming_the_key() {
        let issue = config_with_webhook("https://discord.com/api/webhooks/0/secret-token")
            .validate()
            .expect_err("id 0 is refused");
        assert_eq!(issue.key, "links[0].webhook_url");
        assert!(issue.message.contains("webhook id 0"), "{issue:?}");
        assert!(!issue.message.contains("secret-token"), "{issue:?}");
        assert!(!issue.message.contains('\n'));
        config_with_webhook("https://discord.com/api/webhooks/5/secret-token")
            .validate()
            .expect("a good webhook URL passes");
    }
}
