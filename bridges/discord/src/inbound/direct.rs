//! Direct messages to the bot: `/dm`, `/agents` and `/help` are answered in the DM; anything
//! else goes to the person's chosen agent as an `agent.direct_message`.

use hub_bridge_sdk::dm::{self, Private, PrivateChats};
use hub_bridge_sdk::limits::Action;
use hub_bridge_sdk::relay::Chat;
use hub_bridge_sdk::ExternalId;
use serenity::model::channel::Message;

use super::messages::blocks;
use super::Inbound;
use crate::format;

impl Inbound {
    /// A DM to the bot goes to an agent, as in the Telegram bridge: `/dm <agentId> text` picks
    /// the agent (remembered for later messages), else the one picked before, else
    /// `discord.dm_agent`. `/help` (or `/start`) and `/agents` answer in the DM.
    pub(super) async fn direct_message(&self, message: &Message, live: bool) {
        let user = message.author.id.get();
        // Commands (`/dm`, `/agents`, ...) count against the person's message limit like any
        // message: decided once per Discord message, before anything is retried.
        let sender = ExternalId::new(crate::PLATFORM, user.to_string()).to_string();
        if live && !self.allowed(Action::Message, &sender, message).await {
            return;
        }
        self.shared.note_dm_channel(user, message.channel_id.get());
        let destination = format!("dm:{user}");
        let text = format::hub_text(message.content.trim(), blocks(message).as_deref());
        let private = PrivateChats::new(
            self.shared.hub.clone(),
            crate::PLATFORM,
            self.shared.dm_agent.clone(),
        );
        let user_id = user.to_string();
        let Some(request) = self
            .store("dm choice", || private.read(&user_id, &text))
            .await
        else {
            return;
        };
        match request {
            Private::Reply(answer) => {
                self.relay
                    .notice(&Chat(destination), answer, "discord.command", None)
                    .await;
            }
            Private::Send { agent, text } => self.to_agent(message, &agent, text).await,
        }
    }

    /// Publishes a person's DM as `agent.direct_message` on `pubsub:agent:{agent}`.
    pub(super) async fn to_agent(&self, message: &Message, agent: &str, text: &str) {
        if text.trim().is_empty() {
            return self.ignored("empty_message");
        }
        let from = ExternalId::new(crate::PLATFORM, message.author.id.to_string());
        let event = dm::direct_message(&from, text, message.timestamp.timestamp_millis());
        let hub = &self.shared.hub;
        if self
            .store("direct message", || hub.publish_to_agent(agent, &event))
            .await
            .is_some()
        {
            self.published("agent.direct_message");
        }
    }
}
