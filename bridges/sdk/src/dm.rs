//! Private conversations between a person and the hub's agents, the same on every platform: a
//! private message to the bot goes to an agent as `agent.direct_message`. `/dm <agentId> text`
//! picks the agent (remembered in the store under `{prefix}bridge:{platform}:dm:{userId}`), later
//! messages go to the agent picked last, else to the configured default; `/agents` lists the
//! agents of the directory and `/help` (or `/start`) explains all this.
//!
//! `/dm` reaches agents only (SPEC section 9): never a person (`external:*`, which would make the
//! bot post into any group or DM a stranger), never a malformed id, and, when `[agents]` lists
//! agents, only those (and the bridge's default agent). A refused choice is not remembered, and a remembered choice that is no
//! longer acceptable (an earlier release stored anything) is ignored.

use std::time::Duration;

use crate::bridge::HubHandle;
use crate::event::{AgentEvent, AgentEventData, AgentEventKind, Millis};
use crate::ids::{check_agent_id, ExternalId, Platform};
use crate::store::{Op, StoreError};

/// How long a person's `/dm` choice is remembered.
pub const CHOICE_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

const USAGE: &str = "Usage: /dm <agentId> <message>. /agents lists the agents.";
const NO_AGENT: &str =
    "No agent chosen yet: send /dm <agentId> <message>. /agents lists the agents.";

/// What a private message asks the bridge to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Private<'a> {
    /// Answer in the private chat (help, the agent list, usage, a confirmation).
    Reply(String),
    /// Publish `text` to `agent` as an `agent.direct_message` from the person.
    Send { agent: String, text: &'a str },
}

/// The private conversations of one platform's people.
pub struct PrivateChats {
    hub: HubHandle,
    platform: Platform,
    default_agent: Option<String>,
}

impl PrivateChats {
    pub fn new(hub: HubHandle, platform: Platform, default_agent: Option<String>) -> Self {
        Self {
            hub,
            platform,
            default_agent,
        }
    }

    /// Reads one private message from `user_id`: answers commands, remembers a `/dm` choice,
    /// and says where the text goes.
    pub async fn read<'a>(&self, user_id: &str, text: &'a str) -> Result<Private<'a>, StoreError> {
        let (command, rest) = split_command(text);
        match command {
            Some("start" | "help") => Ok(Private::Reply(self.help())),
            Some("agents") => {
                let current = self.chosen(user_id).await?;
                Ok(Private::Reply(self.agents_list(current.as_deref())))
            }
            Some("dm") => {
                let (agent, body) = rest
                    .split_once(char::is_whitespace)
                    .map_or((rest, ""), |(agent, body)| (agent, body.trim()));
                if agent.is_empty() {
                    return Ok(Private::Reply(USAGE.to_owned()));
                }
                if let Err(why_not) = self.reachable(agent) {
                    return Ok(Private::Reply(why_not));
                }
                let remember = Op::Set {
                    key: self.choice_key(user_id),
                    value: agent.to_owned(),
                    ttl: Some(CHOICE_TTL),
                    only_if_absent: false,
                };
                self.hub.store().one(remember).await?;
                if body.is_empty() {
                    let name = self.hub.display_name(agent, None);
                    return Ok(Private::Reply(format!(
                        "Your messages now go to {name} ({agent})."
                    )));
                }
                Ok(Private::Send {
                    agent: agent.to_owned(),
                    text: body,
                })
            }
            _ => Ok(match self.chosen(user_id).await? {
                Some(agent) => Private::Send { agent, text },
                None => Private::Reply(NO_AGENT.to_owned()),
            }),
        }
    }

    fn choice_key(&self, user_id: &str) -> String {
        self.hub.keys().dm_choice(&self.platform, user_id)
    }

    /// The agent the person picked last, else the default. A stored choice that `/dm` would
    /// refuse today is ignored.
    async fn chosen(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        let key = self.choice_key(user_id);
        let chosen = self.hub.store().one(Op::Get { key }).await?.into_text();
        let chosen = chosen.filter(|agent| {
            let acceptable = self.reachable(agent).is_ok();
            if !acceptable {
                tracing::debug!(platform = %self.platform, "stored /dm choice no longer acceptable; ignored");
            }
            acceptable
        });
        Ok(chosen.or_else(|| self.default_agent.clone()))
    }

    /// Whether `/dm` may reach `agent`; the error is the reply saying why not.
    fn reachable(&self, agent: &str) -> Result<(), String> {
        if let Err(error) = check_agent_id(agent) {
            // Not echoed: it may be long or hold control characters.
            return Err(format!(
                "That is not an agent id (it {error}). /agents lists the agents."
            ));
        }
        if ExternalId::is_external(agent) {
            return Err(format!(
                "/dm reaches the hub's agents only, not people ({agent}). /agents lists the agents."
            ));
        }
        // The default agent is the operator's choice too, listed or not.
        let is_default = self.default_agent.as_deref() == Some(agent);
        let agents = self.hub.agents();
        if !agents.is_empty() && !agents.contains_key(agent) && !is_default {
            return Err(format!(
                "There is no agent {agent} here. /agents lists the agents."
            ));
        }
        Ok(())
    }

    fn help(&self) -> String {
        let default = match &self.default_agent {
            Some(agent) => format!(
                " Until you pick one, your messages go to {}.",
                self.hub.display_name(agent, None)
            ),
            None => String::new(),
        };
        format!(
            "Write here to talk privately with an agent of the hub.{default}\n\
             /agents lists the agents you can reach.\n\
             /dm <agentId> <message> sends to that agent, and your next messages go there too."
        )
    }

    fn agents_list(&self, current: Option<&str>) -> String {
        let agents = self.hub.agents();
        let mut text = if agents.is_empty() {
            "No agent directory is configured; ask the operator for agent ids.".to_owned()
        } else {
            let lines: Vec<String> = agents
                .iter()
                .map(|(id, profile)| {
                    let avatar = profile
                        .avatar
                        .as_deref()
                        .map(|avatar| format!("{avatar} "))
                        .unwrap_or_default();
                    match &profile.name {
                        Some(name) => format!("• {avatar}{name}: /dm {id}"),
                        None => format!("• {avatar}/dm {id}"),
                    }
                })
                .collect();
            format!("Agents you can reach:\n{}", lines.join("\n"))
        };
        if let Some(current) = current {
            text.push_str(&format!("\nYour messages go to {current}."));
        }
        text
    }
}

/// The `agent.direct_message` a person's private message becomes.
pub fn direct_message(from: &ExternalId, text: &str, timestamp: Millis) -> AgentEvent {
    AgentEvent {
        kind: AgentEventKind::DirectMessage,
        data: AgentEventData {
            from_agent: Some(from.to_string()),
            content: Some(text.to_owned()),
            channel_id: None,
            action_required: None,
        },
        timestamp,
    }
}

/// Splits `/command rest` (also `/command@bot rest`); `(None, text)` when it is not a command
/// (`/usr/bin is a path`, `/ hello`).
pub fn split_command(text: &str) -> (Option<&str>, &str) {
    let Some(command) = text.strip_prefix('/') else {
        return (None, text);
    };
    let (word, rest) = command
        .split_once(char::is_whitespace)
        .map_or((command, ""), |(word, rest)| (word, rest.trim()));
    let word = word.split('@').next().unwrap_or(word);
    if word.is_empty() || !word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return (None, text);
    }
    (Some(word), rest)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::bridge::AgentProfile;
    use crate::limits::{LimitsConfig, RateLimiter};
    use crate::metrics::Metrics;
    use crate::store::memory::MemoryStore;
    use crate::store::{Keys, Store};

    fn chats(agents: &[&str], default_agent: Option<&str>) -> (PrivateChats, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::default());
        let keys = Keys::new("t:");
        let shared: Arc<dyn Store> = store.clone();
        let limiter = RateLimiter::new(shared.clone(), keys.clone(), LimitsConfig::default());
        let agents: BTreeMap<String, AgentProfile> = agents
            .iter()
            .map(|id| ((*id).to_owned(), AgentProfile::default()))
            .collect();
        let hub = HubHandle::new(shared, keys, limiter, agents, Arc::new(Metrics::default()));
        let chats = PrivateChats::new(
            hub,
            Platform::named("telegram"),
            default_agent.map(str::to_owned),
        );
        (chats, store)
    }

    fn replies_with(private: &Private<'_>, says: &str) -> bool {
        matches!(private, Private::Reply(text) if text.contains(says))
    }

    #[tokio::test]
    async fn dm_refuses_people_and_does_not_remember_them() {
        let (chats, store) = chats(&[], Some("helper"));
        for target in [
            "external:telegram:-1001234567890",
            "external:discord:123456789012345678",
            "external:telegram:42",
        ] {
            for text in [format!("/dm {target} hi"), format!("/dm {target}")] {
                let reply = chats.read("7", &text).await.unwrap();
                assert!(replies_with(&reply, "agents only"), "{target}: {reply:?}");
            }
        }
        assert!(store.is_empty(), "a refused choice is not stored");
        let next = chats.read("7", "hello").await.unwrap();
        assert_eq!(
            next,
            Private::Send {
                agent: "helper".to_owned(),
                text: "hello"
            }
        );
    }

    #[tokio::test]
    async fn dm_refuses_malformed_ids() {
        let (chats, store) = chats(&[], None);
        let long = format!("/dm {} hi", "a".repeat(500));
        for text in [long.as_str(), "/dm a\u{7}b hi"] {
            let reply = chats.read("7", text).await.unwrap();
            assert!(replies_with(&reply, "not an agent id"), "{reply:?}");
        }
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn with_a_directory_only_listed_agents_are_reachable() {
        let (chats, _store) = chats(&["backend-architect"], None);
        let reply = chats.read("7", "/dm stranger hi").await.unwrap();
        assert!(replies_with(&reply, "no agent stranger"), "{reply:?}");
        assert_eq!(
            chats.read("7", "again").await.unwrap(),
            Private::Reply(NO_AGENT.to_owned())
        );
        let reply = chats.read("7", "/dm backend-architect hi").await.unwrap();
        assert_eq!(
            reply,
            Private::Send {
                agent: "backend-architect".to_owned(),
                text: "hi"
            }
        );
        let next = chats.read("7", "more").await.unwrap();
        assert_eq!(
            next,
            Private::Send {
                agent: "backend-architect".to_owned(),
                text: "more"
            }
        );
    }

    #[tokio::test]
    async fn the_default_agent_is_reachable_even_when_not_listed() {
        let (chats, _store) = chats(&["backend-architect"], Some("concierge"));
        let reply = chats.read("7", "/dm concierge").await.unwrap();
        assert!(replies_with(&reply, "now go to concierge"), "{reply:?}");
    }

    #[tokio::test]
    async fn a_stored_choice_that_is_no_longer_acceptable_is_ignored() {
        let (chats, store) = chats(&[], Some("helper"));
        // What the old release stored for `/dm external:telegram:-100123`.
        store
            .exec(vec![Op::Set {
                key: chats.choice_key("7"),
                value: "external:telegram:-100123".to_owned(),
                ttl: None,
                only_if_absent: false,
            }])
            .await
            .unwrap();
        let next = chats.read("7", "hello").await.unwrap();
        assert_eq!(
            next,
            Private::Send {
                agent: "helper".to_owned(),
                text: "hello"
            }
        );
        let listed = chats.read("7", "/agents").await.unwrap();
        assert!(
            matches!(&listed, Private::Reply(text) if !text.contains("external:")),
            "{listed:?}"
        );
    }

    #[test]
    fn commands_are_split_from_their_text_and_bot_name() {
        assert_eq!(
            split_command("/dm backend-architect hello there"),
            (Some("dm"), "backend-architect hello there")
        );
        assert_eq!(split_command("/dm"), (Some("dm"), ""));
        assert_eq!(split_command("/agents@hub_bot"), (Some("agents"), ""));
        assert_eq!(split_command("hello /dm"), (None, "hello /dm"));
        assert_eq!(split_command("/ not a command"), (None, "/ not a command"));
        assert_eq!(
            split_command("/usr/bin is a path"),
            (None, "/usr/bin is a path")
        );
    }
}
