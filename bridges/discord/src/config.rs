//! The `[discord]` config section.

use hub_bridge_sdk::config::{check_http_url, check_token, ConfigIssue, Secret};
use serde::Deserialize;

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

fn default_api_url() -> String {
    "https://discord.com".to_owned()
}

/// A webhook's id and token, taken from its URL (`.../api/webhooks/{id}/{token}`).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookRef {
    pub id: u64,
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
    let path = url.split_once("/api/")?.1;
    let path = path.strip_prefix("v10/").unwrap_or(path);
    let mut parts = path.strip_prefix("webhooks/")?.split(['/', '?']);
    let id = parts.next()?.parse().ok()?;
    let token = parts.next().filter(|token| !token.is_empty())?;
    Some(WebhookRef {
        id,
        token: Secret::new(token),
    })
}

impl DiscordConfig {
    /// Cross-field checks; the key in the issue is relative to `[discord]`.
    pub fn validate(&self) -> Result<(), ConfigIssue> {
        check_token("token", &self.token)?;
        check_http_url("api_url", &self.api_url)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_parse_on_any_host() {
        let hook = parse_webhook_url("https://discord.com/api/webhooks/123/abc-DEF").unwrap();
        assert_eq!(hook.id, 123);
        assert_eq!(hook.token.expose(), "abc-DEF");
        assert!(parse_webhook_url("http://127.0.0.1:9/api/v10/webhooks/5/t?wait=true").is_some());
        assert!(parse_webhook_url("https://discord.com/api/webhooks/x/abc").is_none());
        assert!(parse_webhook_url("https://discord.com/api/webhooks/1/").is_none());
    }
}
