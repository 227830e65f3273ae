//! Sender ids: how people on a platform appear in the hub (`external:telegram:123`), and the
//! rules every id from a hub payload must follow before it goes into a key or a URL.

use std::borrow::Cow;
use std::fmt;

/// The longest channel, message, thread or agent id accepted from the hub. UUIDs (36), the
/// seeds' agent names and `external:discord:{snowflake}` fit with room to spare.
pub const MAX_ID_LEN: usize = 128;

/// Why an id from a hub payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("is empty")]
    Empty,
    #[error("is {0} bytes long (at most {MAX_ID_LEN})")]
    TooLong(usize),
    #[error("contains whitespace or a control character")]
    Space,
    /// A `:` in a channel, message or thread id would make its keys collide with other keys of
    /// the layout (`channel:{id}` vs `channel:{id}:members`).
    #[error("contains `:`")]
    Colon,
}

/// Checks a channel, message or thread id: it becomes one segment of a `:`-separated key, so it
/// must be non-empty, bounded, without whitespace, control characters or `:`.
pub fn check_key_id(id: &str) -> Result<(), IdError> {
    check_agent_id(id)?;
    if id.contains(':') {
        return Err(IdError::Colon);
    }
    Ok(())
}

/// Checks an agent (or sender) id: non-empty, bounded, without whitespace or control characters.
/// `:` is allowed, since people are agents named `external:telegram:123`; an agent id is always the
/// last segment of its keys, so it cannot reach into another key.
pub fn check_agent_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(id.len()));
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(IdError::Space);
    }
    Ok(())
}

/// A chat platform a bridge connects to, by its short lowercase name (`telegram`). The SDK keeps
/// no list of platforms: each bridge crate names its own, and any well-formed name in an
/// `external:` id is one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform(Cow<'static, str>);

impl Platform {
    /// The longest platform name accepted in an id.
    pub const MAX_NAME_LEN: usize = 32;

    /// A platform a bridge crate names in its code.
    pub const fn named(name: &'static str) -> Self {
        Self(Cow::Borrowed(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// How people read the name: `Telegram`.
    pub fn label(&self) -> String {
        let mut chars = self.0.chars();
        chars
            .next()
            .map(|first| first.to_uppercase().chain(chars).collect())
            .unwrap_or_default()
    }

    /// A name read from an id: lowercase ASCII letters and digits, starting with a letter.
    fn from_name(name: &str) -> Option<Self> {
        let well_formed = name.len() <= Self::MAX_NAME_LEN
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        well_formed.then(|| Self(Cow::Owned(name.to_owned())))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A person on a platform, as the hub names them: `external:{platform}:{userId}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExternalId {
    pub platform: Platform,
    pub user_id: String,
}

impl ExternalId {
    const PREFIX: &'static str = "external:";

    pub fn new(platform: Platform, user_id: impl Into<String>) -> Self {
        Self {
            platform,
            user_id: user_id.into(),
        }
    }

    /// Reads `external:telegram:123`; `None` for agents and malformed ids.
    pub fn parse(sender_id: &str) -> Option<Self> {
        let rest = sender_id.strip_prefix(Self::PREFIX)?;
        let (platform, user_id) = rest.split_once(':')?;
        if user_id.is_empty() {
            return None;
        }
        Some(Self::new(Platform::from_name(platform)?, user_id))
    }

    /// Whether a sender id names a person on a platform rather than an agent.
    pub fn is_external(sender_id: &str) -> bool {
        sender_id.starts_with(Self::PREFIX)
    }

    /// The user id when this id can only name a private chat with one person: a positive number.
    /// Telegram groups and channels have negative ids, so `external:telegram:-100…` is `None`;
    /// a bridge relays an `agent.direct_message` only to a `Some`.
    pub fn private_chat_user_id(&self) -> Option<u64> {
        if !self.user_id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        self.user_id.parse::<u64>().ok().filter(|id| *id > 0)
    }
}

impl fmt::Display for ExternalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}:{}", Self::PREFIX, self.platform, self.user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TELEGRAM: Platform = Platform::named("telegram");

    #[test]
    fn external_ids_round_trip() {
        let id = ExternalId::parse("external:telegram:123").unwrap();
        assert_eq!(id, ExternalId::new(TELEGRAM, "123"));
        assert_eq!(id.to_string(), "external:telegram:123");
        assert_eq!(
            ExternalId::parse("external:discord:456").unwrap().platform,
            Platform::named("discord")
        );
        // Any well-formed platform name: the SDK has no list of platforms.
        let slack = ExternalId::parse("external:slack:U1").unwrap();
        assert_eq!(slack.platform.label(), "Slack");
    }

    #[test]
    fn only_positive_numeric_user_ids_name_a_private_chat() {
        let user = |id: &str| ExternalId::new(TELEGRAM, id).private_chat_user_id();
        assert_eq!(user("123"), Some(123));
        assert_eq!(user("-1001234567890"), None);
        assert_eq!(user("0"), None);
        assert_eq!(user("+5"), None);
        assert_eq!(user("12a"), None);
        assert_eq!(user("99999999999999999999999"), None);
    }

    #[test]
    fn id_rules_accept_the_shapes_in_use_and_refuse_key_breakers() {
        for id in ["9f3c2a1d-5e8f-4b6a-9c1e-2a3b4c5d6e7f", "C", "m-1", "tg-m7"] {
            assert_eq!(check_key_id(id), Ok(()), "{id}");
        }
        for id in [
            "backend-architect",
            "external:telegram:123",
            "external:discord:123456789012345678",
        ] {
            assert_eq!(check_agent_id(id), Ok(()), "{id}");
        }
        assert_eq!(check_key_id("X:members"), Err(IdError::Colon));
        assert_eq!(check_key_id(""), Err(IdError::Empty));
        assert_eq!(check_agent_id("a b"), Err(IdError::Space));
        assert_eq!(check_agent_id("a\u{0}"), Err(IdError::Space));
        assert_eq!(check_agent_id("a\nb"), Err(IdError::Space));
        let long = "a".repeat(MAX_ID_LEN + 1);
        assert_eq!(check_agent_id(&long), Err(IdError::TooLong(MAX_ID_LEN + 1)));
        assert_eq!(check_agent_id(&"a".repeat(MAX_ID_LEN)), Ok(()));
    }

    #[test]
    fn agents_and_malformed_ids_are_not_external_ids() {
        for id in [
            "backend-architect",
            "external:",
            "external:Slack:1",
            "external:tele gram:1",
            "external::1",
            "external:telegram:",
        ] {
            assert_eq!(ExternalId::parse(id), None, "{id}");
        }
    }
}
