//! What the inbound side and the connector of one run share: the REST client, the hub, the
//! bot's identity and its webhooks, the agent DMs go to by default, and small caches of what
//! Discord told us (channel kinds and parents, role names, DM channels). Also the bridge's own
//! store keys. The links and which of them stopped are the relay engine's.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hub_bridge_sdk::keys::DiscordKeys;
use hub_bridge_sdk::HubHandle;
use serde_json::Value;
use serenity::http::{LightMethod, Route};
use serenity::model::id::GuildId;

use crate::config::DiscordConfig;
use crate::ids;
use crate::rest::{RestError, SharedRest};

/// What the bridge needs to know about a Discord channel.
#[derive(Debug, Clone, Default)]
pub struct ChannelInfo {
    pub guild_id: Option<u64>,
    /// The channel a thread belongs to.
    pub parent_id: Option<u64>,
    pub is_thread: bool,
    pub name: Option<String>,
}

/// How long an id the bridge deleted itself is remembered, to ignore the gateway's echo.
const OWN_DELETE_MEMORY: Duration = Duration::from_secs(300);

/// The most channels the lookup caches hold (each of known and failed); a full cache is emptied
/// and refilled, which bounds memory without bookkeeping and costs at most one lookup per entry.
const CHANNEL_CACHE: usize = 10_000;
/// How long a failed channel lookup (unknown channel, missing access) is remembered: a message
/// that mentions it again makes no request (each would count toward Discord's invalid-request
/// limit) until then.
const LOOKUP_FAILURE_TTL: Duration = Duration::from_secs(300);

/// What the caches know about a channel.
#[derive(Debug, Clone)]
pub enum Cached {
    Known(ChannelInfo),
    /// Discord refused the lookup recently.
    Failed,
    Unknown,
}

/// A guild's role names by role id.
pub type RoleNames = Arc<HashMap<u64, String>>;

/// The state of one run, shared by the inbound processor and the connector.
pub struct Shared {
    pub rest: SharedRest,
    pub hub: HubHandle,
    pub dm_agent: Option<String>,
    bot_id: AtomicU64,
    own_webhooks: HashSet<u64>,
    // std mutexes: each is held for a map operation only, never across an await.
    deleted_by_us: Mutex<HashMap<u64, Instant>>,
    channels: Mutex<HashMap<u64, ChannelInfo>>,
    /// Channels whose lookup Discord refused, with when and the error.
    channel_failures: Mutex<HashMap<u64, (Instant, RestError)>>,
    /// Each guild's role names, and when they were fetched.
    roles: Mutex<HashMap<u64, (Instant, RoleNames)>>,
    dm_channels: Mutex<HashMap<u64, u64>>,
}

impl Shared {
    /// A channel's messages, newest first (`GET /channels/{id}/messages` with `params`).
    pub(crate) async fn channel_messages(
        &self,
        channel: u64,
        params: &[(&'static str, String)],
    ) -> Result<Vec<Value>, RestError> {
        self.rest
            .json(
                LightMethod::Get,
                Route::ChannelMessages {
                    channel_id: ids::channel(channel)?,
                },
                params,
                None,
                &format!("get:messages:{channel}"),
            )
            .await
    }

    pub fn new(config: &DiscordConfig, rest: SharedRest, hub: HubHandle) -> Self {
        let own_webhooks = config
            .links
            .iter()
            .filter_map(|link| link.webhook().map(|hook| hook.id.get()))
            .collect();
        Self {
            rest,
            hub,
            dm_agent: config.dm_agent.clone(),
            bot_id: AtomicU64::new(0),
            own_webhooks,
            deleted_by_us: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            channel_failures: Mutex::new(HashMap::new()),
            roles: Mutex::new(HashMap::new()),
            dm_channels: Mutex::new(HashMap::new()),
        }
    }

    pub fn bot_id(&self) -> u64 {
        self.bot_id.load(Ordering::Relaxed)
    }

    pub fn set_bot_id(&self, id: u64) {
        self.bot_id.store(id, Ordering::Relaxed);
    }

    /// Whether a message came from the bridge itself (the bot, or one of the links' webhooks).
    pub fn is_own(&self, author_id: u64, webhook_id: Option<u64>) -> bool {
        author_id == self.bot_id() || webhook_id.is_some_and(|id| self.own_webhooks.contains(&id))
    }

    /// This bridge's keys (`{prefix}bridge:discord:...`).
    pub fn keys(&self) -> DiscordKeys<'_> {
        self.hub.keys().discord()
    }

    /// Remembers that the bridge is deleting `message_id`, so the gateway's echo is ignored.
    pub fn note_own_delete(&self, message_id: u64) {
        let mut deleted = lock(&self.deleted_by_us);
        let now = Instant::now();
        deleted.retain(|_, at| now.duration_since(*at) < OWN_DELETE_MEMORY);
        deleted.insert(message_id, now);
    }

    pub fn deleted_by_us(&self, message_id: u64) -> bool {
        lock(&self.deleted_by_us).contains_key(&message_id)
    }

    /// What the caches know about a channel, without asking Discord.
    pub fn cached_channel(&self, channel_id: u64) -> Cached {
        if let Some(info) = lock(&self.channels).get(&channel_id) {
            return Cached::Known(info.clone());
        }
        match lock(&self.channel_failures).get(&channel_id) {
            Some((at, _)) if at.elapsed() < LOOKUP_FAILURE_TTL => Cached::Failed,
            _ => Cached::Unknown,
        }
    }

    /// What Discord says about a channel, cached (channels do not change kind or parent); a
    /// refusal (4xx: unknown channel, missing access) is cached for [`LOOKUP_FAILURE_TTL`].
    pub async fn channel_info(&self, channel_id: u64) -> Result<ChannelInfo, RestError> {
        if let Some(info) = lock(&self.channels).get(&channel_id) {
            return Ok(info.clone());
        }
        if let Some((at, error)) = lock(&self.channel_failures).get(&channel_id) {
            if at.elapsed() < LOOKUP_FAILURE_TTL {
                return Err(error.clone());
            }
        }
        let fetched: Result<Value, RestError> = match ids::channel(channel_id) {
            Ok(id) => {
                self.rest
                    .json(
                        LightMethod::Get,
                        Route::Channel { channel_id: id },
                        &[],
                        None,
                        "get:channel",
                    )
                    .await
            }
            Err(error) => Err(error),
        };
        let value = match fetched {
            Ok(value) => value,
            Err(error) => {
                let refused = matches!(error, RestError::InvalidId(_))
                    || error
                        .status()
                        .is_some_and(|status| (400..500).contains(&status) && status != 429);
                if refused {
                    bounded_insert(
                        &mut lock(&self.channel_failures),
                        channel_id,
                        (Instant::now(), error.clone()),
                    );
                }
                return Err(error);
            }
        };
        let id = |field: &str| {
            value
                .get(field)
                .and_then(Value::as_str)
                .and_then(ids::parse)
        };
        let kind = value.get("type").and_then(Value::as_u64).unwrap_or(0);
        let info = ChannelInfo {
            guild_id: id("guild_id"),
            parent_id: id("parent_id"),
            // 10, 11, 12: announcement, public and private threads.
            is_thread: matches!(kind, 10..=12),
            name: value.get("name").and_then(Value::as_str).map(str::to_owned),
        };
        bounded_insert(&mut lock(&self.channels), channel_id, info.clone());
        Ok(info)
    }

    /// Remembers what a gateway event told about a channel's guild, saving a lookup.
    pub fn note_guild(&self, channel_id: u64, guild_id: Option<u64>) {
        let mut channels = lock(&self.channels);
        if let Some(info) = channels.get_mut(&channel_id) {
            if info.guild_id.is_none() {
                info.guild_id = guild_id;
            }
        }
    }

    /// The names of the guild's roles mentioned in `content` (`<@&id>`). Fetched on first use and
    /// again when a mentioned role is unknown (it may be new), at most once a minute per guild;
    /// empty when Discord will not say.
    pub async fn role_names(&self, guild: GuildId, content: &str) -> RoleNames {
        let guild_id = guild.get();
        const REFRESH_AFTER: Duration = Duration::from_secs(60);
        let mentioned: Vec<u64> = content
            .split("<@&")
            .skip(1)
            .filter_map(|rest| ids::parse(rest.split_once('>')?.0))
            .collect();
        if let Some((fetched_at, roles)) = lock(&self.roles).get(&guild_id) {
            let known = mentioned.iter().all(|role| roles.contains_key(role));
            if known || fetched_at.elapsed() < REFRESH_AFTER {
                return roles.clone();
            }
        }
        let fetched: Result<Vec<Value>, RestError> = self
            .rest
            .json(
                LightMethod::Get,
                Route::GuildRoles { guild_id: guild },
                &[],
                None,
                "get:roles",
            )
            .await;
        let roles: HashMap<u64, String> = match fetched {
            Ok(roles) => roles
                .iter()
                .filter_map(|role| {
                    let id = ids::parse(role.get("id")?.as_str()?)?;
                    Some((id, role.get("name")?.as_str()?.to_owned()))
                })
                .collect(),
            Err(error) => {
                tracing::debug!(%error, guild_id, "role names unavailable; role mentions show as @role");
                HashMap::new()
            }
        };
        let roles = Arc::new(roles);
        lock(&self.roles).insert(guild_id, (Instant::now(), roles.clone()));
        roles
    }

    /// The DM channel with a user, opened once and cached.
    pub async fn dm_channel(&self, user_id: u64) -> Result<u64, RestError> {
        if let Some(channel) = lock(&self.dm_channels).get(&user_id) {
            return Ok(*channel);
        }
        let body = serde_json::json!({ "recipient_id": user_id.to_string() });
        let value: Value = self
            .rest
            .json(
                LightMethod::Post,
                Route::UserMeDmChannels,
                &[],
                Some(&body),
                "post:dm",
            )
            .await?;
        let channel = value
            .get("id")
            .and_then(Value::as_str)
            .and_then(ids::parse)
            .ok_or_else(|| RestError::Decode("DM channel without an id".to_owned()))?;
        lock(&self.dm_channels).insert(user_id, channel);
        Ok(channel)
    }

    /// Remembers the DM channel a user wrote from.
    pub fn note_dm_channel(&self, user_id: u64, channel_id: u64) {
        lock(&self.dm_channels).insert(user_id, channel_id);
    }
}

/// Inserts into a cache of at most [`CHANNEL_CACHE`] entries (see there).
fn bounded_insert<V>(map: &mut HashMap<u64, V>, key: u64, value: V) {
    if map.len() >= CHANNEL_CACHE && !map.contains_key(&key) {
        map.clear();
    }
    map.insert(key, value);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
