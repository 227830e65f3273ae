//! Every key the service writes in the store, built in this one module: the hub's state keys of
//! SPEC section 3, and the service's own keys under `{prefix}bridge:` (leases, claims, outboxes,
//! the message-id map, dead letters, and each bridge's cursors and maps).
//!
//! The strings are a storage format: state written by an earlier release must still be found after
//! an upgrade, so a key's text never changes here without a migration. The tests at the bottom pin
//! every key's exact text.

use std::fmt;

use crate::limits::Action;

/// Builds the store's keys under the configured prefix (`openclaw:` by default).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    // ----- the hub's state (SPEC section 3) -----

    /// `presence:{channelId}:{agentId}`: a hash, with the presence TTL.
    pub fn presence(&self, channel_id: &str, agent_id: &str) -> String {
        format!("{}presence:{channel_id}:{agent_id}", self.prefix)
    }

    /// `typing:{channelId}`: a sorted set of who is typing.
    pub fn typing(&self, channel_id: &str) -> String {
        format!("{}typing:{channel_id}", self.prefix)
    }

    /// `messages:{channelId}:recent`: the recent-messages cache, dropped on every change.
    pub fn recent_messages(&self, channel_id: &str) -> String {
        format!("{}messages:{channel_id}:recent", self.prefix)
    }

    /// `channel:{channelId}`: the channel's metadata (JSON).
    pub fn channel(&self, channel_id: &str) -> String {
        format!("{}channel:{channel_id}", self.prefix)
    }

    /// `channel:{channelId}:members`: the set of members.
    pub fn members(&self, channel_id: &str) -> String {
        format!("{}channel:{channel_id}:members", self.prefix)
    }

    /// `ratelimit:{action}:{senderId}`: a sender's fixed-window counter.
    pub fn rate_limit(&self, action: Action, sender_id: &str) -> String {
        format!("{}ratelimit:{}:{sender_id}", self.prefix, action.as_str())
    }

    // ----- the service's own keys, under `bridge:` -----

    /// `bridge:lease:{bridge}`: which instance runs a bridge, as `{owner}:{token}`.
    pub fn lease(&self, bridge: &str) -> String {
        self.bridge(format_args!("lease:{bridge}"))
    }

    /// `bridge:lease:{bridge}:fence`: the counter each acquisition of the bridge's lease draws its
    /// fencing token from (never expires, only grows).
    pub fn lease_fence(&self, bridge: &str) -> String {
        self.bridge(format_args!("lease:{bridge}:fence"))
    }

    /// `bridge:handed:{bridge}`: how far the instance running the bridge has handed hub events
    /// to its durable outboxes ([`crate::handover::Mark`]).
    pub fn handed(&self, bridge: &str) -> String {
        self.bridge(format_args!("handed:{bridge}"))
    }

    /// `bridge:refused:{event}`: a hub event the hub loop refused (its sender over the rate
    /// limit), so an instance taking a bridge over does not relay it.
    pub fn refused(&self, event: &str) -> String {
        self.bridge(format_args!("refused:{event}"))
    }

    /// `bridge:offline:{channelId}:{agentId}`: the claim that publishes an offline transition once
    /// across instances.
    pub fn offline_claim(&self, channel_id: &str, agent_id: &str) -> String {
        self.bridge(format_args!("offline:{channel_id}:{agent_id}"))
    }

    /// `bridge:check:{id}`: what `hub-bridge check` writes, reads and deletes (and the pub/sub
    /// channel it round-trips on).
    pub fn check_probe(&self, id: &str) -> String {
        self.bridge(format_args!("check:{id}"))
    }

    /// `bridge:counted:{action}:{event}`: the count a platform event got, so it counts once.
    pub fn counted(&self, action: Action, event: &str) -> String {
        self.bridge(format_args!("counted:{}:{event}", action.as_str()))
    }

    /// `bridge:deadletter:{bridge}`: the list of relays a bridge gave up on.
    pub fn dead_letters(&self, bridge: &str) -> String {
        self.bridge(format_args!("deadletter:{bridge}"))
    }

    /// `bridge:outbox:{bridge}:{destination}`: a destination's durable outbox (a list of jobs).
    pub fn outbox(&self, bridge: &str, destination: &str) -> String {
        self.bridge(format_args!("outbox:{bridge}:{destination}"))
    }

    /// `bridge:media:key`: the key that signs media links, shared by every instance so any of
    /// them can serve any link.
    pub fn media_key(&self) -> String {
        self.bridge(format_args!("media:key"))
    }

    /// `bridge:outboxes:{bridge}`: the set of a bridge's destinations with a stored backlog.
    pub fn outboxes(&self, bridge: &str) -> String {
        self.bridge(format_args!("outboxes:{bridge}"))
    }

    /// `bridge:msgmap:{platform}:hub:{hubMessageId}:{chat}`: a hub message's platform ids in a
    /// chat (all its parts).
    pub fn msgmap_forward(
        &self,
        platform: &dyn fmt::Display,
        hub_message_id: &str,
        chat: &str,
    ) -> String {
        self.bridge(format_args!(
            "msgmap:{platform}:hub:{hub_message_id}:{chat}"
        ))
    }

    /// `bridge:msgmap:{platform}:{chat}:{messageId}`: the hub message a platform message is (also
    /// the claim that publishes it once).
    pub fn msgmap_reverse(
        &self,
        platform: &dyn fmt::Display,
        chat: &str,
        message_id: &str,
    ) -> String {
        self.bridge(format_args!("msgmap:{platform}:{chat}:{message_id}"))
    }

    /// `bridge:{platform}:dm:{userId}`: the agent a person's private messages go to.
    pub fn dm_choice(&self, platform: &dyn fmt::Display, user_id: &str) -> String {
        self.bridge(format_args!("{platform}:dm:{user_id}"))
    }

    /// `bridge:thread:{threadId}`: the hub message a hub thread hangs on (Telegram's, not scoped
    /// by platform).
    pub fn thread_root(&self, thread_id: &str) -> String {
        self.bridge(format_args!("thread:{thread_id}"))
    }

    /// `bridge:threadof:{hubMessageId}`: the hub thread a hub message is in or starts
    /// (Telegram's, not scoped by platform).
    pub fn thread_of(&self, hub_message_id: &str) -> String {
        self.bridge(format_args!("threadof:{hub_message_id}"))
    }

    /// The relay engine's keys for one platform (`telegram`).
    pub fn relay<'a>(&'a self, platform: &'a str) -> RelayKeys<'a> {
        RelayKeys {
            keys: self,
            platform,
        }
    }

    /// The Telegram bridge's keys.
    pub fn telegram(&self) -> TelegramKeys<'_> {
        TelegramKeys(self)
    }

    /// The Discord bridge's keys.
    pub fn discord(&self) -> DiscordKeys<'_> {
        DiscordKeys(self)
    }

    /// `{prefix}bridge:{rest}`: where every key of the service's own lives.
    fn bridge(&self, rest: fmt::Arguments<'_>) -> String {
        format!("{}bridge:{rest}", self.prefix)
    }
}

/// The relay engine's keys of one platform, all under `bridge:{platform}:` (the names are those
/// the Telegram bridge gave them before the engine existed, so its state carries over).
#[derive(Debug, Clone, Copy)]
pub struct RelayKeys<'a> {
    keys: &'a Keys,
    platform: &'a str,
}

impl RelayKeys<'_> {
    /// `bridge:{platform}:stopped`: the set of stopped links, members `{hubChannel} {chat}`.
    pub fn stopped(&self) -> String {
        self.key(format_args!("stopped"))
    }

    /// `bridge:{platform}:look:{hubMessageId}`: how a relayed message looks, for its edits.
    pub fn look(&self, hub_message_id: &str) -> String {
        self.key(format_args!("look:{hub_message_id}"))
    }

    /// `bridge:{platform}:header:{hubMessageId}:{chat}`: what a connector showed before a
    /// message's text in one chat (a quote, a name), for its edits.
    pub fn header(&self, hub_message_id: &str, chat: &str) -> String {
        self.key(format_args!("header:{hub_message_id}:{chat}"))
    }

    /// `bridge:{platform}:fileparts:{hubMessageId}:{chat}`: the parts showing only a message's
    /// files in one chat (JSON list), which its edits leave alone.
    pub fn file_parts(&self, hub_message_id: &str, chat: &str) -> String {
        self.key(format_args!("fileparts:{hub_message_id}:{chat}"))
    }

    /// `bridge:{platform}:topic:{chat}:{threadId}`: the platform thread showing a hub thread.
    pub fn thread(&self, chat: &str, thread_id: &str) -> String {
        self.key(format_args!("topic:{chat}:{thread_id}"))
    }

    /// `bridge:{platform}:topicthread:{chat}:{platformThread}`: the hub thread a platform
    /// thread shows.
    pub fn hub_thread(&self, chat: &str, platform_thread: &str) -> String {
        self.key(format_args!("topicthread:{chat}:{platform_thread}"))
    }

    /// `bridge:{platform}:in_thread:{hubMessageId}:{chat}`: the platform thread a message was
    /// shown in.
    pub fn shown_in(&self, hub_message_id: &str, chat: &str) -> String {
        self.key(format_args!("in_thread:{hub_message_id}:{chat}"))
    }

    /// `bridge:{platform}:{claim}:{index}`: the claim that publishes the `index`th hub event of
    /// one platform update once (`bridge:telegram:update:7:0`).
    pub fn claim(&self, claim: &str, index: usize) -> String {
        self.key(format_args!("{claim}:{index}"))
    }

    /// `bridge:{platform}:member:{channel}:{claim}`: the claim that publishes a membership change
    /// (`{chat}:{userId}:{verb}:{date}`) once into a channel.
    pub fn member_claim(&self, hub_channel: &str, claim: &str) -> String {
        self.key(format_args!("member:{hub_channel}:{claim}"))
    }

    /// `bridge:{platform}:reactions:{chat}:{partId}`: the agents' standing reactions on a part.
    pub fn reactions(&self, chat: &str, part: &str) -> String {
        self.key(format_args!("reactions:{chat}:{part}"))
    }

    fn key(&self, rest: fmt::Arguments<'_>) -> String {
        self.keys.bridge(format_args!("{}:{rest}", self.platform))
    }
}

/// The Telegram bridge's keys, all under `bridge:telegram:`.
#[derive(Debug, Clone, Copy)]
pub struct TelegramKeys<'a>(&'a Keys);

impl TelegramKeys<'_> {
    /// `bridge:telegram:{botId}:offset`: the getUpdates offset of one bot.
    pub fn offset(&self, bot_id: u64) -> String {
        self.key(format_args!("{bot_id}:offset"))
    }

    /// `bridge:telegram:offset`: the offset as releases before the per-bot key kept it; read
    /// once and moved to [`Self::offset`].
    pub fn legacy_offset(&self) -> String {
        self.key(format_args!("offset"))
    }

    fn key(&self, rest: fmt::Arguments<'_>) -> String {
        self.0.bridge(format_args!("telegram:{rest}"))
    }
}

/// The Discord bridge's keys, all under `bridge:discord:`.
#[derive(Debug, Clone, Copy)]
pub struct DiscordKeys<'a>(&'a Keys);

impl DiscordKeys<'_> {
    /// `bridge:discord:identify`: the gateway IDENTIFY slot shared by every instance.
    pub fn identify(&self) -> String {
        self.key(format_args!("identify"))
    }

    /// `bridge:discord:stopped:{hubChannel}:{discordChannel}`: a stopped link.
    pub fn stopped(&self, hub_channel: &str, discord_channel: &str) -> String {
        self.key(format_args!("stopped:{hub_channel}:{discord_channel}"))
    }

    /// `bridge:discord:own:{messageId}`: a message the bridge posted.
    pub fn own(&self, message_id: u64) -> String {
        self.key(format_args!("own:{message_id}"))
    }

    /// `bridge:discord:in_thread:{hubMessageId}:{chat}`: the Discord thread a hub message's parts
    /// are in.
    pub fn in_thread(&self, hub_message_id: &str, chat: &str) -> String {
        self.key(format_args!("in_thread:{hub_message_id}:{chat}"))
    }

    /// `bridge:discord:thread:hub:{hubThreadId}:{chat}`: the Discord thread showing a hub thread.
    pub fn thread_by_hub(&self, hub_thread_id: &str, chat: &str) -> String {
        self.key(format_args!("thread:hub:{hub_thread_id}:{chat}"))
    }

    /// `bridge:discord:thread:dc:{chat}`: the hub thread a Discord thread shows (`chat` names the
    /// thread as the message map does).
    pub fn thread_by_discord(&self, chat: &str) -> String {
        self.key(format_args!("thread:dc:{chat}"))
    }

    /// `bridge:discord:last_seen:{channelId}`: the catch-up cursor of a channel.
    pub fn last_seen(&self, channel_id: u64) -> String {
        self.key(format_args!("last_seen:{channel_id}"))
    }

    fn key(&self, rest: fmt::Arguments<'_>) -> String {
        self.0.bridge(format_args!("discord:{rest}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key's text, as releases before this module wrote it: a change here loses state on
    /// upgrade.
    #[test]
    fn every_key_keeps_its_text() {
        let keys = Keys::new("p:");
        let telegram = keys.telegram();
        let discord = keys.discord();
        let relay = keys.relay("telegram");
        let pinned = [
            (keys.presence("C", "a"), "p:presence:C:a"),
            (keys.typing("C"), "p:typing:C"),
            (keys.recent_messages("C"), "p:messages:C:recent"),
            (keys.channel("C"), "p:channel:C"),
            (keys.members("C"), "p:channel:C:members"),
            (
                keys.rate_limit(Action::Message, "external:telegram:1"),
                "p:ratelimit:message:external:telegram:1",
            ),
            (keys.rate_limit(Action::Typing, "a"), "p:ratelimit:typing:a"),
            (keys.lease("telegram"), "p:bridge:lease:telegram"),
            (
                keys.lease_fence("telegram"),
                "p:bridge:lease:telegram:fence",
            ),
            (keys.handed("telegram"), "p:bridge:handed:telegram"),
            (keys.refused("e1"), "p:bridge:refused:e1"),
            (keys.offline_claim("C", "a"), "p:bridge:offline:C:a"),
            (keys.check_probe("x-1"), "p:bridge:check:x-1"),
            (keys.media_key(), "p:bridge:media:key"),
            (
                keys.counted(Action::Reaction, "discord:message:5:reaction"),
                "p:bridge:counted:reaction:discord:message:5:reaction",
            ),
            (keys.dead_letters("discord"), "p:bridge:deadletter:discord"),
            (
                keys.outbox("telegram", "telegram:-100"),
                "p:bridge:outbox:telegram:telegram:-100",
            ),
            (keys.outboxes("discord"), "p:bridge:outboxes:discord"),
            (
                keys.msgmap_forward(&"telegram", "m1", "-100"),
                "p:bridge:msgmap:telegram:hub:m1:-100",
            ),
            (
                keys.msgmap_reverse(&"discord", "7/C", "9"),
                "p:bridge:msgmap:discord:7/C:9",
            ),
            (keys.dm_choice(&"telegram", "42"), "p:bridge:telegram:dm:42"),
            (keys.dm_choice(&"discord", "42"), "p:bridge:discord:dm:42"),
            (keys.thread_root("t1"), "p:bridge:thread:t1"),
            (keys.thread_of("m1"), "p:bridge:threadof:m1"),
            (telegram.offset(123), "p:bridge:telegram:123:offset"),
            (telegram.legacy_offset(), "p:bridge:telegram:offset"),
            (relay.stopped(), "p:bridge:telegram:stopped"),
            (relay.claim("update:7", 0), "p:bridge:telegram:update:7:0"),
            (
                relay.member_claim("C", "-100:5:join:1700"),
                "p:bridge:telegram:member:C:-100:5:join:1700",
            ),
            (
                relay.thread("-100", "t1"),
                "p:bridge:telegram:topic:-100:t1",
            ),
            (
                relay.hub_thread("-100", "3"),
                "p:bridge:telegram:topicthread:-100:3",
            ),
            (relay.look("m1"), "p:bridge:telegram:look:m1"),
            (relay.header("m1", "7/C"), "p:bridge:telegram:header:m1:7/C"),
            (
                relay.reactions("-100", "8"),
                "p:bridge:telegram:reactions:-100:8",
            ),
            (
                keys.relay("discord").shown_in("m1", "7"),
                "p:bridge:discord:in_thread:m1:7",
            ),
            (discord.identify(), "p:bridge:discord:identify"),
            (discord.stopped("C", "7"), "p:bridge:discord:stopped:C:7"),
            (discord.own(9), "p:bridge:discord:own:9"),
            (
                discord.in_thread("m1", "7"),
                "p:bridge:discord:in_thread:m1:7",
            ),
            (
                discord.thread_by_hub("t1", "7/C"),
                "p:bridge:discord:thread:hub:t1:7/C",
            ),
            (
                discord.thread_by_discord("8"),
                "p:bridge:discord:thread:dc:8",
            ),
            (discord.last_seen(7), "p:bridge:discord:last_seen:7"),
        ];
        for (built, expected) in pinned {
            assert_eq!(built, expected);
        }
    }
}
