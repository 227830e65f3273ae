//! The service's configuration (SPEC section 7): defaults, then the TOML file, then `HUB_`
//! environment variables with `__` for nesting (`HUB_TELEGRAM__TOKEN`), loaded with figment.
//!
//! Every problem becomes one [`ConfigError`] naming the key and where it came from, before anything
//! connects; `main` prints it and exits with code 2.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::error::Kind;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use hub_bridge_sdk::config::{ConfigIssue, Secret};
use hub_bridge_sdk::limits::LimitsConfig;
use hub_bridge_sdk::media::MediaSettings;
use hub_bridge_sdk::registry::{BridgeConfig, Section};
use hub_bridge_sdk::AgentProfile;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::bridges::REGISTERED;

/// The whole configuration.
///
/// Unknown keys are errors at every level. At the top level the loader checks them itself
/// ([`HUB_SECTIONS`] and the registered bridges' sections), since the bridges' sections are not
/// fields of this struct.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub hub: HubConfig,
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub media: MediaConfig,
    /// `[ha]`: several instances against one Redis.
    #[serde(default)]
    pub ha: HaConfig,
    /// `[api]`: the agent API's stream settings (the API itself is on when an agent has an
    /// `api_token`).
    #[serde(default)]
    pub api: crate::api::ApiConfig,
    /// `[agents.{id}]`: how agents are shown on the platforms.
    #[serde(default)]
    pub agents: BTreeMap<String, AgentProfile>,
    /// The sections of the bridges to run (`[telegram]`, `[discord]`): a bridge runs when its
    /// section is present. Read through [`crate::bridges::REGISTERED`], not by serde.
    #[serde(skip)]
    pub bridges: Vec<Section>,
}

/// The top-level sections that are the hub's own (the fields of [`Config`] serde reads).
const HUB_SECTIONS: &[&str] = &[
    "hub", "redis", "http", "limits", "media", "ha", "api", "agents",
];

/// `[hub]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Prefix of every state key (default `openclaw:`); pub/sub channels are never prefixed.
    pub key_prefix: String,
    /// Presence TTL in seconds (default 300).
    pub presence_ttl_secs: u64,
    /// Hub events buffered per bridge before the hub loop drops (and counts) them (default 10000).
    pub bridge_queue: usize,
    /// Payloads buffered between the Redis subscriber and the hub loop (default 65536).
    pub subscriber_queue: usize,
    /// How long a graceful stop may take, in seconds (default 10).
    pub shutdown_grace_secs: u64,
    /// Hub payloads larger than this many bytes are refused before parsing, counted, and their
    /// agent told (default 1048576).
    pub max_payload_bytes: usize,
    /// The most (channel, agent) presences the hub loop tracks to announce `offline`; beyond it
    /// the ones refreshed longest ago are dropped and counted (default 100000).
    pub max_tracked_presences: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            key_prefix: "openclaw:".to_owned(),
            presence_ttl_secs: 300,
            bridge_queue: 10_000,
            subscriber_queue: 65_536,
            shutdown_grace_secs: 10,
            max_payload_bytes: 1_048_576,
            max_tracked_presences: 100_000,
        }
    }
}

/// `[redis]`: one Redis by `url`, or a primary found through Redis Sentinel (`sentinels` and
/// `master_name`); neither: the embedded in-process bus.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`; absent: the embedded in-process bus (or Sentinel,
    /// with `sentinels`). May carry a password, so it is a secret.
    pub url: Option<Secret>,
    /// The Sentinels to ask for the primary, as `redis://host:port` URLs, instead of `url`
    /// (default none). A URL may carry the Sentinels' own password, so each is a secret.
    pub sentinels: Option<Vec<Secret>>,
    /// The name the Sentinels monitor the primary under (`sentinel monitor <name> ...`); required
    /// with `sentinels` (default none).
    pub master_name: Option<String>,
    /// The password of the primary and replicas the Sentinels name (their `requirepass`), only
    /// with `sentinels` (default none; with `url` it goes in the URL). A secret.
    pub password: Option<Secret>,
    /// How many replicas must acknowledge a durable write (`WAIT`) within a second before the
    /// store counts it as safe; fewer: the write stands, is counted and the store shows as
    /// degraded (default 0: no waiting).
    #[serde(default)]
    pub wait_replicas: u32,
}

impl RedisConfig {
    /// Whether the service runs on Redis (a `url` or `sentinels`) rather than the embedded bus.
    pub fn is_configured(&self) -> bool {
        self.url.is_some() || self.sentinels.is_some()
    }

    /// Checks the section on its own: exactly one way to reach Redis, each URL usable.
    fn validate(&self) -> Result<(), ConfigIssue> {
        if let Some(url) = &self.url {
            check_redis_url("redis.url", url)?;
        }
        if self.password.is_some() && self.sentinels.is_none() {
            return Err(ConfigIssue::new(
                "redis.password",
                "only used with redis.sentinels (with redis.url, the password goes in the URL)",
            ));
        }
        match (&self.sentinels, &self.master_name) {
            (Some(_), _) if self.url.is_some() => Err(ConfigIssue::new(
                "redis.sentinels",
                "give either redis.url or redis.sentinels, not both",
            )),
            (Some(sentinels), _) if sentinels.is_empty() => Err(ConfigIssue::new(
                "redis.sentinels",
                "must list at least one sentinel URL",
            )),
            (Some(_), None) => Err(ConfigIssue::new(
                "redis.master_name",
                "required with redis.sentinels",
            )),
            (Some(_), Some(name)) if name.trim().is_empty() => {
                Err(ConfigIssue::new("redis.master_name", "must not be empty"))
            }
            (Some(sentinels), Some(_)) => {
                for (index, url) in sentinels.iter().enumerate() {
                    check_redis_url(&format!("redis.sentinels[{index}]"), url)?;
                }
                Ok(())
            }
            (None, Some(_)) => Err(ConfigIssue::new(
                "redis.master_name",
                "only used with redis.sentinels",
            )),
            (None, None) if self.wait_replicas > 0 && self.url.is_none() => Err(ConfigIssue::new(
                "redis.wait_replicas",
                "needs redis.url or redis.sentinels (the embedded bus has no replicas)",
            )),
            (None, None) => Ok(()),
        }
    }
}

/// A Redis URL the service can connect with. The URL may carry a password: the message never
/// quotes it.
fn check_redis_url(key: &str, url: &Secret) -> Result<(), ConfigIssue> {
    let parsed = url::Url::parse(url.expose())
        .map_err(|e| ConfigIssue::new(key, format!("is not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "redis" | "rediss" | "unix" | "redis+unix") {
        return Err(ConfigIssue::new(
            key,
            format!("scheme `{}` is not redis:// or rediss://", parsed.scheme()),
        ));
    }
    if parsed.scheme().starts_with("redis") && parsed.host_str().is_none_or(str::is_empty) {
        return Err(ConfigIssue::new(key, "has no host"));
    }
    Ok(())
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where `/healthz`, `/readyz` and `/metrics` listen (default `127.0.0.1:9464`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The base of the media links handed to agents, as they reach this service
    /// (`https://bridge.example.com`; default `http://` + `listen`).
    pub public_url: Option<String>,
}

impl HttpConfig {
    /// `public_url`, or the address the service listens on.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.listen),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            public_url: None,
        }
    }
}

/// `[media]`: files relayed both ways (SPEC section 5, "Media").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// The largest file relayed, in bytes; larger ones go as a link or their name and size
    /// (default 20971520).
    pub max_bytes: u64,
    /// How long the media links handed to agents stay valid, in seconds (default 604800).
    pub link_ttl_secs: u64,
    /// Hosts agents' file URLs may use although they resolve to loopback or private addresses,
    /// matched against the host as written in the URL (default none).
    pub allow_hosts: Vec<String>,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            max_bytes: MediaSettings::DEFAULT_MAX_BYTES,
            link_ttl_secs: MediaSettings::DEFAULT_LINK_TTL_SECS,
            allow_hosts: Vec::new(),
        }
    }
}

/// `[ha]`: several instances against one Redis (SPEC section 6).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaConfig {
    /// Seconds a bridge's lease lasts without renewal (default 5): another instance takes a
    /// bridge over within this time (and a second) after the instance running it dies. The
    /// holder renews every third of it; at least 2, so a renewal has time to arrive.
    pub lease_ttl_secs: u64,
}

impl HaConfig {
    /// The smallest `lease_ttl_secs`.
    pub const MIN_LEASE_TTL_SECS: u64 = 2;
}

impl Default for HaConfig {
    fn default() -> Self {
        Self { lease_ttl_secs: 5 }
    }
}

impl Config {
    /// The media desk's settings: `[media]` and `http.public_url`.
    pub fn media_settings(&self) -> MediaSettings {
        MediaSettings {
            public_url: self.http.public_url(),
            max_bytes: self.media.max_bytes,
            link_ttl_secs: self.media.link_ttl_secs,
            allow_hosts: self.media.allow_hosts.clone(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

/// A config problem: which key, where it came from, what is wrong. Displays as one line.
#[derive(Debug, thiserror::Error)]
#[error("config error in {source_name}: {}{message}", key_part(key))]
pub struct ConfigError {
    pub source_name: String,
    pub key: String,
    pub message: String,
}

/// `key: ` before the message, or nothing when the problem is not one key's (a syntax error).
fn key_part(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

impl Config {
    /// Loads `path`, then the `HUB_` environment on top, and validates the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        // HUB_LOG is the log filter, read by main, not a config key.
        Self::load_with_env(path, Env::prefixed("HUB_").ignore(&["log"]).split("__"))
    }

    fn load_with_env(path: &Path, env: Env) -> Result<Self, ConfigError> {
        let file_name = path.display().to_string();
        if !path.is_file() {
            return Err(ConfigError {
                source_name: file_name,
                key: "--config".to_owned(),
                message: "file not found".to_owned(),
            });
        }
        let figment = Figment::new().merge(Toml::file_exact(path)).merge(env);
        let config = Self::extract(&figment).map_err(|error| from_figment(*error, &file_name))?;
        config.validate().map_err(|issue| ConfigError {
            source_name: file_name,
            key: issue.key,
            message: issue.message,
        })?;
        Ok(config)
    }

    /// Reads the hub's sections and each registered bridge's section that is present; any other
    /// top-level key is an unknown key. The top-level keys are looked at in order, so with several
    /// problems the first key's is reported, as when serde reads the whole file in one struct.
    fn extract(figment: &Figment) -> Result<Self, Box<figment::Error>> {
        let top: BTreeMap<String, IgnoredAny> = figment.extract()?;
        let hub = figment.extract::<Self>().map_err(Box::new);
        let mut bridges = Vec::new();
        for key in top.keys() {
            if HUB_SECTIONS.contains(&key.as_str()) {
                match &hub {
                    Err(error) if error.path.first() == Some(key) => return hub,
                    _ => continue,
                }
            }
            let Some(bridge) = REGISTERED.iter().find(|bridge| bridge.section() == key) else {
                let mut error = figment::Error::from(Kind::UnknownField(key.clone(), &[]));
                error.path = vec![key.clone()];
                error.metadata = figment.find_metadata(key).cloned();
                return Err(Box::new(error));
            };
            bridges.push(bridge.extract(figment)?);
        }
        // Checked and started in the order of the list, whatever the order in the file.
        bridges.sort_by_key(|section| {
            REGISTERED
                .iter()
                .position(|bridge| bridge.section() == section.name())
        });
        let mut config = hub?;
        config.bridges = bridges;
        Ok(config)
    }

    /// The section of bridge `C`, when it is configured (tests and embedders adjust it).
    pub fn bridge_mut<C: BridgeConfig>(&mut self) -> Option<&mut C> {
        self.bridges.iter_mut().find_map(Section::get_mut)
    }

    /// Cross-field checks after parsing.
    fn validate(&self) -> Result<(), ConfigIssue> {
        self.redis.validate()?;
        if self.hub.presence_ttl_secs == 0 {
            return Err(ConfigIssue::new(
                "hub.presence_ttl_secs",
                "must be at least 1",
            ));
        }
        if self.hub.bridge_queue == 0 || self.hub.subscriber_queue == 0 {
            return Err(ConfigIssue::new("hub", "queue sizes must be at least 1"));
        }
        if self.hub.max_payload_bytes == 0 {
            return Err(ConfigIssue::new(
                "hub.max_payload_bytes",
                "must be at least 1",
            ));
        }
        if self.hub.max_tracked_presences == 0 {
            return Err(ConfigIssue::new(
                "hub.max_tracked_presences",
                "must be at least 1",
            ));
        }
        if self.ha.lease_ttl_secs < HaConfig::MIN_LEASE_TTL_SECS {
            return Err(ConfigIssue::new(
                "ha.lease_ttl_secs",
                format!("must be at least {}", HaConfig::MIN_LEASE_TTL_SECS),
            ));
        }
        if let Some(url) = &self.http.public_url {
            hub_bridge_sdk::config::check_http_url("http.public_url", url)?;
        }
        if self.media.max_bytes == 0 {
            return Err(ConfigIssue::new("media.max_bytes", "must be at least 1"));
        }
        if self.media.link_ttl_secs == 0 {
            return Err(ConfigIssue::new(
                "media.link_ttl_secs",
                "must be at least 1",
            ));
        }
        // Matched against the host as a URL writes it (`example.com`, `127.0.0.1`, `[::1]`).
        if let Some(host) =
            self.media.allow_hosts.iter().find(|host| {
                host.is_empty() || host.contains(|c: char| c == '/' || c.is_whitespace())
            })
        {
            return Err(ConfigIssue::new(
                "media.allow_hosts",
                format!("`{host}` is not a host name or address (no scheme or path)"),
            ));
        }
        for (id, profile) in &self.agents {
            if let Some(url) = &profile.avatar_url {
                hub_bridge_sdk::config::check_http_url(&format!("agents.{id}.avatar_url"), url)?;
            }
        }
        crate::api::validate_config(&self.agents, &self.api, self.http.listen)?;
        for bridge in &self.bridges {
            bridge.validate()?;
        }
        Ok(())
    }

    /// The config file the service reads when `--config` is not given.
    pub fn default_path() -> PathBuf {
        PathBuf::from("config/hub-bridge.toml")
    }
}

/// Turns figment's error into one line naming the key and the file or variable it came from.
fn from_figment(error: figment::Error, file_name: &str) -> ConfigError {
    let source_name = error
        .metadata
        .as_ref()
        .map(|metadata| match &metadata.source {
            Some(figment::Source::File(path)) => path.display().to_string(),
            _ if metadata.name.contains("environment") => "the environment (HUB_*)".to_owned(),
            _ => file_name.to_owned(),
        })
        .unwrap_or_else(|| file_name.to_owned());
    let mut key = error.path.join(".");
    let message = match &error.kind {
        // figment's path already ends with the unknown field.
        Kind::UnknownField(..) => "unknown key".to_owned(),
        Kind::MissingField(field) => {
            if !key.ends_with(field.as_ref()) {
                key = if key.is_empty() {
                    field.to_string()
                } else {
                    format!("{key}.{field}")
                };
            }
            "is required".to_owned()
        }
        // A TOML syntax error: "TOML parse error at line 1, column 5" and what was expected,
        // folded into one line.
        Kind::Message(message) => {
            let lines: Vec<&str> = message
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect();
            match (lines.first(), lines.last()) {
                (Some(first), Some(last)) if lines.len() > 1 => format!("{first}: {last}"),
                _ => message.trim().to_owned(),
            }
        }
        other => other.to_string(),
    };
    ConfigError {
        source_name,
        key,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load_with_env(&path, Env::prefixed("HUB_TEST_UNUSED_").split("__"))
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let config = load("").unwrap();
        assert_eq!(config.hub.key_prefix, "openclaw:");
        assert!(config.redis.url.is_none());
        assert_eq!(config.limits.message, 10);
        assert_eq!(config.http.listen.port(), 9464);
    }

    #[test]
    fn unknown_keys_are_named() {
        let error = load("[hub]\nkey_prefx = \"x\"\n").unwrap_err();
        assert_eq!(error.key, "hub.key_prefx");
        assert!(error.to_string().contains("hub.toml"), "{error}");
    }

    #[test]
    fn an_unknown_section_is_named() {
        let error = load("[bogus]\nx = 1\n").unwrap_err();
        assert_eq!(error.key, "bogus");
        assert_eq!(error.message, "unknown key");
        assert!(error.to_string().contains("hub.toml"), "{error}");
    }

    #[test]
    fn every_hub_section_is_known() {
        let all = "[hub]\n[redis]\n[http]\n[limits]\n[media]\n[ha]\n[api]\n[agents.a]\n";
        let config = load(all).unwrap();
        assert!(config.bridges.is_empty());
    }

    #[cfg(feature = "telegram")]
    #[test]
    fn a_bridge_section_names_its_keys_after_the_section() {
        use hub_bridge_telegram::TelegramConfig;

        let telegram = "[telegram]\ntoken = \"1:A\"\n[[telegram.links]]\nchannel = \"C\"\n";
        let error = load(&format!("{telegram}chat = \"x\"\n")).unwrap_err();
        assert_eq!(error.key, "telegram.links.0.chat");
        let error = load(&format!("{telegram}chat = 0\n")).unwrap_err();
        assert_eq!(error.key, "telegram.links[0].chat");
        let mut config = load(&format!("{telegram}chat = -1\n")).unwrap();
        assert_eq!(config.bridges.len(), 1);
        let section = config.bridge_mut::<TelegramConfig>().unwrap();
        assert_eq!(section.links[0].chat, -1);
    }

    #[cfg(all(feature = "telegram", feature = "discord"))]
    #[test]
    fn bridges_run_in_the_order_of_the_list() {
        let config = load("[discord]\ntoken = \"d\"\n[telegram]\ntoken = \"1:A\"\n").unwrap();
        let names: Vec<&str> = config.bridges.iter().map(Section::name).collect();
        assert_eq!(names, ["telegram", "discord"]);
    }

    #[test]
    fn a_bad_redis_url_is_named() {
        let error = load("[redis]\nurl = \"http://x\"\n").unwrap_err();
        assert_eq!(error.key, "redis.url");
    }

    #[test]
    fn bounds_default_and_must_be_positive() {
        let config = load("").unwrap();
        assert_eq!(config.hub.max_payload_bytes, 1_048_576);
        assert_eq!(config.hub.max_tracked_presences, 100_000);
        let error = load("[hub]\nmax_payload_bytes = 0\n").unwrap_err();
        assert_eq!(error.key, "hub.max_payload_bytes");
        let error = load("[hub]\nmax_tracked_presences = 0\n").unwrap_err();
        assert_eq!(error.key, "hub.max_tracked_presences");
        let config = load("[hub]\nmax_payload_bytes = 4096\n").unwrap();
        assert_eq!(config.hub.max_payload_bytes, 4096);
    }

    #[test]
    fn the_lease_ttl_defaults_to_5_and_is_at_least_2() {
        assert_eq!(load("").unwrap().ha.lease_ttl_secs, 5);
        assert_eq!(
            load("[ha]\nlease_ttl_secs = 2\n")
                .unwrap()
                .ha
                .lease_ttl_secs,
            2
        );
        for bad in ["0", "1"] {
            let error = load(&format!("[ha]\nlease_ttl_secs = {bad}\n")).unwrap_err();
            assert_eq!(error.key, "ha.lease_ttl_secs", "{error}");
            assert!(error.to_string().contains("at least 2"), "{error}");
        }
        let error = load("[ha]\nlease_ttl_secs = -5\n").unwrap_err();
        assert_eq!(error.key, "ha.lease_ttl_secs", "{error}");
        let error = load("[ha]\nlease_ttl = 5\n").unwrap_err();
        assert_eq!(error.key, "ha.lease_ttl", "{error}");
    }

    #[test]
    fn sentinels_come_with_a_master_name_and_without_a_url() {
        let sentinels = "[redis]\nsentinels = [\"redis://127.0.0.1:26379\"]\n";
        let error = load(sentinels).unwrap_err();
        assert_eq!(error.key, "redis.master_name");
        assert_eq!(error.message, "required with redis.sentinels");
        let error = load(&format!("{sentinels}url = \"redis://127.0.0.1:6379\"\n")).unwrap_err();
        assert_eq!(error.key, "redis.sentinels");
        let error = load("[redis]\nmaster_name = \"hub\"\n").unwrap_err();
        assert_eq!(error.key, "redis.master_name");
        let error = load("[redis]\nsentinels = []\nmaster_name = \"hub\"\n").unwrap_err();
        assert_eq!(error.key, "redis.sentinels");
        let bad = "[redis]\nmaster_name = \"hub\"\nsentinels = [\"redis://a:1\", \"http://b\"]\n";
        assert_eq!(load(bad).unwrap_err().key, "redis.sentinels[1]");
        let config = load(&format!(
            "{sentinels}master_name = \"hub\"\nwait_replicas = 1\n"
        ))
        .unwrap();
        assert!(config.redis.is_configured());
        assert_eq!(config.redis.wait_replicas, 1);
        assert_eq!(load("").unwrap().redis.wait_replicas, 0);
    }

    #[test]
    fn waiting_for_replicas_needs_redis() {
        let error = load("[redis]\nwait_replicas = 1\n").unwrap_err();
        assert_eq!(error.key, "redis.wait_replicas");
        let with_url = "[redis]\nurl = \"redis://127.0.0.1:6379\"\nwait_replicas = 1\n";
        assert!(load(with_url).is_ok());
    }

    #[test]
    fn sentinel_passwords_never_print() {
        let toml = "[redis]\nsentinels = [\"redis://:hunter2@127.0.0.1:26379\"]\n\
                    master_name = \"hub\"\npassword = \"swordfish\"\n";
        let config = load(toml).unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2") && !printed.contains("swordfish"));
    }

    #[test]
    fn the_data_nodes_password_comes_only_with_sentinels() {
        let error =
            load("[redis]\nurl = \"redis://127.0.0.1:6379\"\npassword = \"x\"\n").unwrap_err();
        assert_eq!(error.key, "redis.password");
        assert_eq!(
            load("[redis]\npassword = \"x\"\n").unwrap_err().key,
            "redis.password"
        );
    }

    #[test]
    fn the_redis_url_never_prints() {
        let config = load("[redis]\nurl = \"redis://:hunter2@127.0.0.1:6379\"\n").unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
