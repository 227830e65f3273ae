//! Private conversations between a person and the hub's agents, the same on every platform: a
//! private message to the bot goes to an agent as `agent.direct_message`. `/dm <agentId> text`
//! picks the agent (remembered in the store under `{prefix}bridge:{platform}:dm:{userId}`), later
//! messages go to the agent picked last, else to the configured default; `/agents` lists the
//! agents of the directory and `/help` (or `/start`) explains all this.

use std::time::Duration;

use crate::bridge::HubHandle;
use crate::event::{AgentEvent, AgentEventData, AgentEventKind, Millis};
use crate::ids::{ExternalId, Platform};
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
        self.hub
            .keys()
            .bridge(&format!("{}:dm:{user_id}", self.platform))
    }

    /// The agent the person picked last, else the default.
    async fn chosen(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        let key = self.choice_key(user_id);
        let chosen = self.hub.store().one(Op::Get { key }).await?.into_text();
        Ok(chosen.or_else(|| self.default_agent.clone()))
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
    use super::*;

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
