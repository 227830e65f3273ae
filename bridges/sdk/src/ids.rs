//! Sender ids: how people on a platform appear in the hub (`external:telegram:123`).

use std::fmt;

/// A chat platform a bridge connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    Telegram,
    Discord,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Telegram => "telegram",
            Self::Discord => "discord",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "telegram" => Some(Self::Telegram),
            "discord" => Some(Self::Discord),
            _ => None,
        }
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
}

impl fmt::Display for ExternalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}:{}", Self::PREFIX, self.platform, self.user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_ids_round_trip() {
        let id = ExternalId::parse("external:telegram:123").unwrap();
        assert_eq!(id, ExternalId::new(Platform::Telegram, "123"));
        assert_eq!(id.to_string(), "external:telegram:123");
        assert_eq!(
            ExternalId::parse("external:discord:456").unwrap().platform,
            Platform::Discord
        );
    }

    #[test]
    fn agents_and_malformed_ids_are_not_external_ids() {
        for id in [
            "backend-architect",
            "external:",
            "external:slack:1",
            "external:telegram:",
        ] {
            assert_eq!(ExternalId::parse(id), None, "{id}");
        }
    }
}
