//! Direct messages to the bot, read into the engine's [`Whisper`]: `/dm`, `/agents` and `/help`
//! are answered in the DM; anything else goes to the person's chosen agent as an
//! `agent.direct_message` (the engine's, as on every platform).

use hub_bridge_sdk::relay::{Chat, PlatformEvent, Whisper};
use serenity::model::channel::Message;

use super::messages::blocks;
use super::{person, Inbound};
use crate::format;

impl Inbound {
    /// A DM to the bot goes to an agent, as in the Telegram bridge: `/dm <agentId> text` picks
    /// the agent (remembered for later messages), else the one picked before, else
    /// `discord.dm_agent`. `/help` (or `/start`) and `/agents` answer in the DM.
    pub(super) async fn direct_message(&self, message: &Message, live: bool) {
        let user = message.author.id.get();
        // The DM channel the answers and notices for `dm:{user}` go to.
        self.shared.note_dm_channel(user, message.channel_id.get());
        let name = format::display_name(
            None,
            message.author.global_name.as_deref(),
            &message.author.name,
        );
        let whisper = Whisper {
            chat: Chat(format!("dm:{user}")),
            author: person(user, name),
            user_id: user.to_string(),
            text: format::hub_text(message.content.trim(), blocks(message).as_deref()),
            timestamp: message.timestamp.timestamp_millis(),
            live,
            // Counted against the limit under the same key as before the engine counted it.
            claim: format!("message:{}", message.id),
        };
        self.publish("publish direct message", &PlatformEvent::Private(whisper))
            .await;
    }
}
