//! Everything a person does on the platform besides writing a new message: edits, deletes,
//! reactions, typing, joining and leaving, and private messages to the bot (a command, or a
//! message for an agent).

use crate::dm::{self, Private, PrivateChats};
use crate::event::{now_millis, ChannelEvent, Member, Millis, Source};
use crate::ids::{ExternalId, Platform};
use crate::limits::Action;
use crate::relay::connector::{Chat, Connector, PartId, Place};
use crate::relay::inbound::events::{Handled, Person, Whisper};
use crate::relay::inbound::CLAIM_TTL;
use crate::relay::{Link, Relay};
use crate::store::{Op, StoreError};

/// Whether an event publishes once per claim, and under which.
#[derive(Clone, Copy)]
struct Once<'a>(Option<&'a str>);

impl<C: Connector> Relay<C> {
    pub(super) async fn edit(
        &self,
        place: &Place,
        id: &PartId,
        content: &str,
        edited_at: Millis,
        claim: Option<&str>,
    ) -> Result<Handled, StoreError> {
        let links = self.links_for(&place.chat);
        let mut ops = Vec::new();
        for (index, (link, hub_id)) in self.mapped(&links, place, id).await?.iter().enumerate() {
            let event = ChannelEvent::MessageEdit {
                channel_id: link.hub_channel.clone(),
                message_id: hub_id.clone(),
                content: content.to_owned(),
                edited_at,
                metadata: None,
            };
            ops.push(self.publish_op(&event, &link.chat, Once(claim), index, hub_id));
        }
        self.publish_mapped(&links, ops, "channel.message.edit")
            .await
    }

    pub(super) async fn delete(&self, place: &Place, id: &PartId) -> Result<Handled, StoreError> {
        let links = self.links_for(&place.chat);
        let mut ops = Vec::new();
        for (link, hub_id) in self.mapped(&links, place, id).await? {
            let event = ChannelEvent::MessageDelete {
                channel_id: link.hub_channel.clone(),
                message_id: hub_id.clone(),
                deleted_at: now_millis(),
            };
            ops.push(self.publish_op(&event, &link.chat, Once(None), 0, &hub_id));
        }
        self.publish_mapped(&links, ops, "channel.message.delete")
            .await
    }

    /// A change of a person's reactions: counted once against their reaction limit (over it,
    /// they are told once per window), then each removal and each addition published into
    /// every linked channel, removals first.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn reaction(
        &self,
        place: &Place,
        id: &PartId,
        person: &Person,
        added: &[String],
        removed: &[String],
        claim: &str,
        once: bool,
    ) -> Result<Handled, StoreError> {
        let links = self.links_for(&place.chat);
        let mapped = self.mapped(&links, place, id).await?;
        if mapped.is_empty() {
            return Ok(unmapped(&links));
        }
        let sender = person.id.to_string();
        let notice = person.notice_in(&place.chat);
        if !self
            .within_limit(Action::Reaction, &sender, claim, Some(notice))
            .await?
        {
            return Ok(Handled::Done);
        }
        let once = Once(once.then_some(claim));
        let (mut adds, mut removes) = (Vec::new(), Vec::new());
        let mut index = 0;
        for (link, hub_id) in &mapped {
            let changes = added.iter().map(|e| (e, true));
            for (emoji, add) in changes.chain(removed.iter().map(|e| (e, false))) {
                let (channel_id, message_id, emoji, agent_id) = (
                    link.hub_channel.clone(),
                    hub_id.clone(),
                    emoji.clone(),
                    sender.clone(),
                );
                let event = if add {
                    ChannelEvent::ReactionAdd {
                        channel_id,
                        message_id,
                        emoji,
                        agent_id,
                    }
                } else {
                    ChannelEvent::ReactionRemove {
                        channel_id,
                        message_id,
                        emoji,
                        agent_id,
                    }
                };
                let op = self.publish_op(&event, &link.chat, once, index, hub_id);
                index += 1;
                if add { &mut adds } else { &mut removes }.push(op);
            }
        }
        self.publish_all(removes, "channel.reaction.remove").await?;
        self.publish_all(adds, "channel.reaction.add").await?;
        Ok(Handled::Done)
    }

    pub(super) async fn typing(
        &self,
        place: &Place,
        person: &ExternalId,
    ) -> Result<Handled, StoreError> {
        let mut ops = Vec::new();
        for link in self.links_for(&place.chat) {
            let thread_id = match &place.thread {
                Some(thread) => self.known_hub_thread(&link, thread).await?,
                None => None,
            };
            let event = ChannelEvent::Typing {
                channel_id: link.hub_channel.clone(),
                agent_id: person.to_string(),
                started: true,
                thread_id,
            };
            ops.push(self.publish_op(&event, &link.chat, Once(None), 0, ""));
        }
        self.publish_all(ops, "channel.typing").await?;
        Ok(Handled::Done)
    }

    /// A person joined or left a linked chat: published once per change into each channel.
    pub(super) async fn member(
        &self,
        chat: &Chat,
        person: &ExternalId,
        joined: bool,
        at: Millis,
        claim: &str,
    ) -> Result<Handled, StoreError> {
        let agent_id = person.to_string();
        let relay_keys = self.hub().keys().relay(self.connector().name());
        let origin = self.connector().origin(chat);
        let ops = self
            .links_for(chat)
            .into_iter()
            .map(|link| {
                let channel_id = link.hub_channel.clone();
                let event = if joined {
                    ChannelEvent::MemberJoin {
                        channel_id,
                        member: Member {
                            agent_id: agent_id.clone(),
                            joined_at: at,
                            role: "member".to_owned(),
                        },
                    }
                } else {
                    ChannelEvent::MemberLeave {
                        channel_id,
                        agent_id: agent_id.clone(),
                        left_at: Some(at),
                    }
                };
                Op::PublishOnce {
                    claim_key: relay_keys.member_claim(&link.hub_channel, claim),
                    claim_value: agent_id.clone(),
                    ttl: CLAIM_TTL,
                    channel: Source::Channel(link.hub_channel.clone()).channel_name(),
                    payload: self.hub().event_payload(&event, &origin),
                }
            })
            .collect();
        let type_name = if joined {
            "channel.member.join"
        } else {
            "channel.member.leave"
        };
        self.publish_all(ops, type_name).await?;
        Ok(Handled::Done)
    }

    /// A private message to the bot: a command is answered in the private chat, anything else
    /// goes to the person's agent (SPEC section 5). Commands count against the person's message
    /// limit like messages, so nobody can make the bot answer without bound.
    pub(super) async fn private(&self, whisper: &Whisper) -> Result<Handled, StoreError> {
        let sender = whisper.author.id.to_string();
        if whisper.live {
            let notice = whisper.author.notice_in(&whisper.chat);
            if !self
                .within_limit(Action::Message, &sender, &whisper.claim, Some(notice))
                .await?
            {
                return Ok(Handled::Done);
            }
        }
        let name = self.connector().name();
        let private = PrivateChats::new(
            self.hub().clone(),
            Platform::named(name),
            self.connector().dm_agent(),
        );
        match private.read(&whisper.user_id, &whisper.text).await? {
            Private::Reply(answer) => {
                let event_type = format!("{name}.command");
                self.notice(&whisper.chat, answer, &event_type, None).await;
            }
            Private::Send { text, .. } if text.trim().is_empty() => {
                self.core.count_ignored("empty_message");
            }
            Private::Send { agent, text } => {
                let event = dm::direct_message(&whisper.author.id, text, whisper.timestamp);
                let op = Op::PublishOnce {
                    claim_key: self.hub().keys().relay(name).claim(&whisper.claim, 0),
                    claim_value: agent.clone(),
                    ttl: CLAIM_TTL,
                    channel: Source::Agent(agent).channel_name(),
                    payload: event.to_json(),
                };
                self.publish_all(vec![op], "agent.direct_message").await?;
            }
        }
        Ok(Handled::Done)
    }

    /// The links of `place`'s chat that map platform message `id`, with the hub message it is
    /// there.
    async fn mapped(
        &self,
        links: &[Link],
        place: &Place,
        id: &PartId,
    ) -> Result<Vec<(Link, String)>, StoreError> {
        let mut mapped = Vec::new();
        for link in links {
            let in_link = Place {
                chat: link.chat.clone(),
                hub_channel: Some(link.hub_channel.clone()),
                thread: place.thread.clone(),
            };
            let chat = self.core.map_chat(&in_link);
            if let Some(hub_id) = self
                .map()
                .hub_id(self.connector().name(), &chat, &id.0)
                .await?
            {
                mapped.push((link.clone(), hub_id));
            }
        }
        Ok(mapped)
    }

    /// Publishes what [`Relay::mapped`] found; `Unmapped` when a linked chat's message was not.
    async fn publish_mapped(
        &self,
        links: &[Link],
        ops: Vec<Op>,
        type_name: &str,
    ) -> Result<Handled, StoreError> {
        if ops.is_empty() {
            return Ok(unmapped(links));
        }
        self.publish_all(ops, type_name).await?;
        Ok(Handled::Done)
    }

    /// The op that publishes `event` from `chat`: once per claim and index (the `index`th event
    /// of one platform update), or every time.
    fn publish_op(
        &self,
        event: &ChannelEvent,
        chat: &Chat,
        once: Once<'_>,
        index: usize,
        claim_value: &str,
    ) -> Op {
        let origin = self.connector().origin(chat);
        match once.0 {
            Some(claim) => Op::PublishOnce {
                claim_key: self
                    .hub()
                    .keys()
                    .relay(self.connector().name())
                    .claim(claim, index),
                claim_value: claim_value.to_owned(),
                ttl: CLAIM_TTL,
                channel: Source::Channel(event.channel_id().to_owned()).channel_name(),
                payload: self.hub().event_payload(event, &origin),
            },
            None => self.hub().publish_op(event, &origin),
        }
    }
}

/// What an event about a message no link maps comes to: nothing to wait for when the chat has
/// no relaying link.
fn unmapped(links: &[Link]) -> Handled {
    if links.is_empty() {
        Handled::Done
    } else {
        Handled::Unmapped
    }
}
