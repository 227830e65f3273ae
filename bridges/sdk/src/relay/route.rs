//! Routing (SPEC section 5): which hub events become which jobs in which chats. It runs on the
//! bridge's delivery loop and never waits on a platform: a hub event becomes one job per linked
//! chat (never the chat it came from), queued in that chat's outbox; typing goes to the typing
//! indicators instead.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bridge::{DeadLetter, Delivery};
use crate::emoji::Emoji;
use crate::event::{
    is_streaming, now_millis, AgentEvent, AgentEventKind, ChannelEvent, ChannelMessage,
    GlobalEventKind, HubEvent, Source,
};
use crate::guard::handle_event;
use crate::ids::ExternalId;
use crate::relay::connector::{Author, Chat, Connector, Look, Place};
use crate::relay::job::{self, About, Action, Job};
use crate::relay::{home, thread_name, Link, Relay};
use crate::text::names::person_name;

impl<C: Connector> Relay<C> {
    /// A bridge's delivery loop: routes the hub events of `deliveries` in order, each one whole,
    /// until the queue closes (the hub loop stopped) or `stop` is cancelled; then the events
    /// still queued go into the durable outboxes ([`Self::drain`]). A bridge runs it beside its
    /// platform side, to completion (it is not raced), so no event is dropped halfway.
    pub async fn deliver(
        &self,
        deliveries: &mut mpsc::Receiver<Arc<Delivery>>,
        stop: &CancellationToken,
    ) {
        loop {
            let delivery = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                delivery = deliveries.recv() => delivery,
            };
            let Some(delivery) = delivery else { return };
            self.handle(&delivery).await;
        }
        self.drain(deliveries).await;
    }

    /// Routes the hub events still waiting in `deliveries`, without waiting for more: on a
    /// graceful stop their jobs then stand in the durable outboxes, which the next instance to run
    /// the bridge resumes, before the lease is let go (SPEC section 6: a handover loses nothing).
    /// Only while this run holds the lease: a run that lost it leaves them queued, and the
    /// supervisor keeps them for whichever instance runs the bridge next (routed here, they would
    /// go nowhere: the outboxes refuse a stale fence). Returns how many it routed.
    pub async fn drain(&self, deliveries: &mut mpsc::Receiver<Arc<Delivery>>) -> usize {
        if deliveries.is_empty() {
            self.core.handed.write(self.hub()).await;
            return 0;
        }
        if !self.outboxes.fence_holds().await {
            tracing::info!(
                bridge = self.connector().name(),
                queued = deliveries.len(),
                "this run no longer holds the lease: queued hub events are left for the next holder"
            );
            return 0;
        }
        let mut drained = 0;
        while let Ok(delivery) = deliveries.try_recv() {
            self.handle(&delivery).await;
            drained += 1;
        }
        // The next holder relays from here on, at once rather than up to a tick later.
        self.core.handed.write(self.hub()).await;
        tracing::info!(
            bridge = self.connector().name(),
            drained,
            "queued hub events moved into the durable outboxes before stopping"
        );
        drained
    }

    /// Routes one hub event from the bridge's queue ([`Self::route`]). One event that makes
    /// routing panic is counted and skipped, so the next is routed (SPEC section 9).
    pub async fn handle(&self, delivery: &Delivery) {
        let routed = self.route(delivery);
        handle_event(
            self.hub().metrics(),
            self.connector().name(),
            "hub event",
            routed,
        )
        .await;
    }

    /// Turns one hub event into jobs for the chats it concerns, then moves the handover mark past
    /// it.
    pub async fn route(&self, delivery: &Delivery) {
        self.route_event(delivery).await;
        self.core.handed.passed(delivery.id, delivery.received_at);
    }

    async fn route_event(&self, delivery: &Delivery) {
        match (&delivery.source, &delivery.inbound.event) {
            (Source::Channel(_), HubEvent::Channel(event)) => {
                self.channel_event(delivery, event).await;
            }
            (Source::Agent(recipient), HubEvent::Agent(event))
                if event.kind == AgentEventKind::DirectMessage =>
            {
                self.direct_message(delivery, recipient, event).await;
            }
            (Source::Global, HubEvent::Global(event))
                if event.kind == GlobalEventKind::Announcement =>
            {
                let Some(text) = event.data.message.as_deref() else {
                    return;
                };
                let text = format!("📢 {text}");
                for chat in self.links().active_chats() {
                    let job = Job::notice(text.clone(), "system.announcement", None);
                    self.outboxes.push(&chat.0, job).await;
                }
            }
            _ => {}
        }
    }

    async fn direct_message(&self, delivery: &Delivery, recipient: &str, event: &AgentEvent) {
        let Some(person) = ExternalId::parse(recipient) else {
            return;
        };
        if person.platform.as_str() != self.connector().name() {
            return;
        }
        let from = event.data.from_agent.clone().unwrap_or_default();
        let about = About {
            event_type: "agent.direct_message".to_owned(),
            agent_id: agent(Some(&from)),
            channel_id: None,
            payload: serde_json::to_value(event).unwrap_or_default(),
            received_at: Some(delivery.received_at),
        };
        // Only a person's own private chat (SPEC section 9): anything else is refused before it
        // reaches a request.
        let chat = person
            .private_chat_user_id()
            .and_then(|id| self.connector().private_chat(&id.to_string()));
        let Some(chat) = chat else {
            return self
                .refuse_direct_message(recipient, &person.user_id, about)
                .await;
        };
        let look = Look {
            author: Some(self.author(&from, None)),
            ..Look::default()
        };
        let send = job::Send {
            hub_channel: None,
            hub_message_id: None,
            look,
            text: event.data.content.clone().unwrap_or_default(),
            reply_to: None,
            thread_id: None,
            progress: None,
            streaming: false,
        };
        let job = Job {
            about,
            action: Action::Send(Box::new(send)),
        };
        self.outboxes.push(&chat.0, job).await;
    }

    /// A direct message to an id that is not a person of this platform: counted, kept as a dead
    /// letter, and the agent told.
    async fn refuse_direct_message(&self, recipient: &str, user_id: &str, about: About) {
        let name = self.connector().name();
        self.core.count_ignored("direct_message_to_non_user");
        let letter = DeadLetter {
            destination: recipient.to_owned(),
            event_type: about.event_type,
            reason: format!(
                "direct messages go only to a person's private chat, and `{user_id}` is not a {} \
                 user id",
                crate::ids::Platform::named(name).label()
            ),
            agent_id: about.agent_id,
            channel_id: None,
            payload: about.payload,
            at: now_millis(),
        };
        if let Err(error) = self.hub().dead_letter(name, letter).await {
            tracing::warn!(%error, "could not keep a refused direct message as a dead letter");
        }
    }

    async fn channel_event(&self, delivery: &Delivery, event: &ChannelEvent) {
        let channel = event.channel_id();
        let origin = delivery.inbound.origin.as_ref();
        // No echo: what came from a chat is not relayed back to it.
        let links: Vec<Link> = self
            .links()
            .of_channel(channel)
            .into_iter()
            .filter(|link| origin != Some(&self.connector().origin(&link.chat)))
            .collect();
        if links.is_empty() {
            return;
        }
        let actor = event.actor().or(delivery.inbound.sender_id.as_deref());
        let about = About {
            event_type: event.type_name().to_owned(),
            agent_id: agent(actor),
            channel_id: Some(channel.to_owned()),
            payload: serde_json::to_value(event).unwrap_or_default(),
            received_at: Some(delivery.received_at),
        };
        match event {
            ChannelEvent::ThreadCreate { thread, .. } if !thread.parent_message_id.is_empty() => {
                // Remember where the thread hangs, so its messages answer the parent where the
                // chat has no threads.
                let ops = self
                    .records()
                    .thread_root_ops(&thread.id, &thread.parent_message_id);
                if let Err(error) = self.hub().store().exec(ops).await {
                    tracing::warn!(%error, thread = %thread.id, "could not record a thread; its messages will not be replies");
                }
            }
            ChannelEvent::ReactionAdd { emoji, .. }
            | ChannelEvent::ReactionRemove { emoji, .. } => {
                // The emoji reaches a platform request: what is not one emoji is refused here,
                // once per event.
                if let Err(error) = Emoji::parse(emoji) {
                    // People read it: the platform as it calls itself ("Discord").
                    let name = crate::ids::Platform::named(self.connector().name()).label();
                    let what = event.type_name();
                    return self
                        .refuse(
                            actor,
                            channel,
                            "invalid_emoji",
                            format!("Your {what} was not relayed to {name}: {error}."),
                        )
                        .await;
                }
            }
            ChannelEvent::Typing {
                agent_id,
                started,
                thread_id,
                ..
            } => {
                for link in &links {
                    if !*started {
                        self.core.typing.stop(&link.chat, agent_id);
                        continue;
                    }
                    let place = self.typing_place(link, thread_id.as_deref()).await;
                    self.core.typing.start(place, agent_id);
                }
                return;
            }
            ChannelEvent::Archive { .. } | ChannelEvent::Delete { .. } => {
                return self.stop_links(event, links).await;
            }
            _ => {}
        }
        self.answer_typing(event, actor, &links).await;
        for link in links {
            if let Some(action) = self.action(event, &link) {
                let job = Job {
                    about: about.clone(),
                    action,
                };
                self.outboxes.push(&link.chat.0, job).await;
            }
        }
    }

    /// The job a channel event makes for one link's chat; `None` for events a chat does not show.
    fn action(&self, event: &ChannelEvent, link: &Link) -> Option<Action<C::Part>> {
        let hub_channel = link.hub_channel.clone();
        Some(match event {
            ChannelEvent::Message { message, .. } => {
                Action::Send(Box::new(self.send(&hub_channel, message, None)))
            }
            ChannelEvent::ThreadMessage {
                thread_id, message, ..
            } => Action::Send(Box::new(self.send(&hub_channel, message, Some(thread_id)))),
            ChannelEvent::ThreadCreate { thread, .. } if !thread.parent_message_id.is_empty() => {
                Action::OpenThread(job::OpenThread {
                    hub_channel,
                    thread_id: thread.id.clone(),
                    parent: thread.parent_message_id.clone(),
                })
            }
            ChannelEvent::MessageEdit {
                message_id,
                content,
                metadata,
                ..
            } => Action::Edit(job::Edit {
                hub_channel,
                hub_message_id: message_id.clone(),
                text: content.clone(),
                progress: None,
                streaming: is_streaming(metadata.as_ref()),
            }),
            ChannelEvent::MessageDelete { message_id, .. } => Action::Delete(job::Delete {
                hub_channel,
                hub_message_id: message_id.clone(),
                progress: None,
            }),
            ChannelEvent::ReactionAdd {
                message_id,
                emoji,
                agent_id,
                ..
            }
            | ChannelEvent::ReactionRemove {
                message_id,
                emoji,
                agent_id,
                ..
            } => Action::React(job::React {
                hub_channel,
                hub_message_id: message_id.clone(),
                agent_id: agent_id.clone(),
                emoji: emoji.clone(),
                add: matches!(event, ChannelEvent::ReactionAdd { .. }),
            }),
            _ => return None,
        })
    }

    /// An agent's message ends its typing, unless it is a streamed answer's start or one of its
    /// intermediate edits: while an answer streams, the chats show the bot typing (SPEC section
    /// 5); its last edit ends it.
    async fn answer_typing(&self, event: &ChannelEvent, actor: Option<&str>, links: &[Link]) {
        let (streaming, thread_id) = match event {
            ChannelEvent::Message { message, .. } => {
                (message.is_streaming(), message.thread_id.as_deref())
            }
            ChannelEvent::ThreadMessage {
                thread_id, message, ..
            } => (message.is_streaming(), Some(thread_id.as_str())),
            ChannelEvent::MessageEdit { metadata, .. } => (is_streaming(metadata.as_ref()), None),
            _ => return,
        };
        let Some(agent) = actor else { return };
        for link in links {
            if streaming {
                let place = self.typing_place(link, thread_id).await;
                self.core.typing.start(place, agent);
            } else {
                self.core.typing.stop(&link.chat, agent);
            }
        }
    }

    /// Where an agent's typing shows in a link's chat: the platform thread of its hub thread when
    /// there is one.
    async fn typing_place(&self, link: &Link, thread_id: Option<&str>) -> Place {
        let mut place = home(&link.chat, Some(&link.hub_channel));
        if let Some(thread_id) = thread_id {
            match self.core.known_thread(&place, thread_id).await {
                Ok(thread) => place.thread = thread,
                Err(error) => tracing::debug!(?error, "could not look up a thread for typing"),
            }
        }
        place
    }

    /// The hub channel was archived or deleted: each chat is told once, and its link stops.
    async fn stop_links(&self, event: &ChannelEvent, links: Vec<Link>) {
        let (what, by) = match event {
            ChannelEvent::Archive { archived_by, .. } => ("archived", archived_by),
            ChannelEvent::Delete { deleted_by, .. } => ("deleted", deleted_by),
            _ => return,
        };
        let by = if by.is_empty() {
            String::new()
        } else {
            format!(" by {}", self.hub().display_name(by, None))
        };
        let text = format!(
            "🗄 The hub channel linked to this chat was {what}{by}. Messages are no longer \
             relayed between this chat and the hub."
        );
        for link in links {
            let job = Job::notice(text.clone(), event.type_name(), None);
            self.outboxes.push(&link.chat.0, job).await;
            if let Err(error) = self.links().stop(self.hub(), &link).await {
                tracing::warn!(%error, channel = %link.hub_channel, chat = %link.chat, "could not store the stopped link; a restart will relay it again");
            }
        }
    }

    /// Counts an event the relay refuses, and tells the agent that sent it (people get no
    /// notifications).
    async fn refuse(
        &self,
        sender: Option<&str>,
        channel: &str,
        reason: &'static str,
        message: String,
    ) {
        self.core.count_ignored(reason);
        tracing::debug!(
            reason,
            sender,
            bridge = self.connector().name(),
            "hub event refused"
        );
        let Some(agent) = agent(sender) else {
            return;
        };
        if let Err(error) = self
            .hub()
            .notify_agent(&agent, Some(channel), message)
            .await
        {
            tracing::warn!(%error, agent, "could not tell an agent why its event was refused");
        }
    }

    fn send(
        &self,
        hub_channel: &str,
        message: &ChannelMessage,
        thread_id: Option<&String>,
    ) -> job::Send<C::Part> {
        let thread_id = thread_id.or(message.thread_id.as_ref()).cloned();
        let look = Look {
            author: Some(self.author(&message.sender_id, message.author_name.as_deref())),
            blocks: message.content_blocks.clone().unwrap_or_default(),
            topic_name: Some(thread_name(Some(&message.content))),
            thread_id: thread_id.clone(),
            header: None,
            file_parts: Vec::new(),
        };
        job::Send {
            hub_channel: Some(hub_channel.to_owned()),
            hub_message_id: Some(message.id.clone()),
            look,
            text: message.content.clone(),
            reply_to: message.parent_message_id.clone(),
            thread_id,
            progress: None,
            streaming: message.is_streaming(),
        }
    }

    /// How a sender is shown. A person relayed from a platform never looks like an agent: no
    /// avatar, their platform after their name, and a mark when the name is an agent's.
    fn author(&self, sender_id: &str, author_name: Option<&str>) -> Author {
        let hub = self.hub();
        if let Some(person) = ExternalId::parse(sender_id) {
            let platform = person.platform.label();
            return Author {
                name: person_name(
                    author_name.unwrap_or(&person.user_id),
                    &platform,
                    hub.agent_names(),
                ),
                avatar: None,
                avatar_url: None,
                person: true,
            };
        }
        let profile = hub.profile(sender_id);
        Author {
            name: hub.display_name(sender_id, author_name),
            avatar: profile.and_then(|profile| profile.avatar.clone()),
            avatar_url: profile.and_then(|profile| profile.avatar_url.clone()),
            person: false,
        }
    }
}

/// The agent told about a relay's fate: a sender that is neither empty nor a person.
fn agent(sender: Option<&str>) -> Option<String> {
    sender
        .filter(|id| !id.is_empty() && !ExternalId::is_external(id))
        .map(str::to_owned)
}

impl Chat {
    /// The chat's outbox destination.
    pub fn destination(&self) -> &str {
        &self.0
    }
}
