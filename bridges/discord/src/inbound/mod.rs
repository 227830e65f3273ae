//! Discord -> hub (SPEC section 5): what people do in linked channels and their threads, and
//! their DMs to the bot, read into the relay engine's [`PlatformEvent`]s; the engine publishes
//! them (which links, once, the inbound limit, replies, threads, DMs to agents). After a gap the
//! linked channels are caught up from the last seen id.
//!
//! One task processes the gateway's events in order and publishes each before taking the next;
//! while the store is unreachable it waits and retries, so nothing is lost (SPEC section 6). The
//! engine publishes a message once, so the gateway and a catch-up fetch that both see it publish
//! it once.
//!
//! Ordering: serenity hands each event to its handler in a task of its own, so two events that
//! arrive together can reach the queue swapped. The processor undoes what matters: messages that
//! are queued together are handled in id (creation) order, and an edit, delete or reaction whose
//! message is not mapped yet is retried shortly, in case its message is just behind it.
//!
//! Chapters: `messages` (new messages, their mentions and attachments), `changes` (edits,
//! deletes, reactions, typing), `direct` (DMs to the bot) and `catch_up` (the gap after a
//! restart).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hub_bridge_sdk::guard::handle_event;
use hub_bridge_sdk::relay::{Chat, Handled, Link, Person, Place, PlatformEvent, Relay, ThreadRef};
use hub_bridge_sdk::{ExternalId, StoreError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::connector::Discord;
use crate::gateway::GatewayEvent;
use crate::shared::Shared;

mod catch_up;
mod changes;
mod direct;
mod messages;

/// Times the event processor yields to serenity's other handler tasks before it sorts a batch.
const STRAGGLER_YIELDS: usize = 4;
/// How often an event whose message is not mapped yet is retried, and how far apart.
const DEFER_ATTEMPTS: u32 = 10;
const DEFER_STEP: Duration = Duration::from_millis(100);
/// Messages fetched per catch-up request (Discord's maximum).
const PAGE: usize = 100;
/// At most this many pages per channel per catch-up; a longer gap is logged and cut short.
const MAX_PAGES: usize = 50;
/// At most this many channel lookups for one message's `<#id>` mentions (SPEC section 5,
/// bounded work); the rest render as `#channel`.
const MAX_LOOKUPS_PER_MESSAGE: usize = 5;

/// The newest message id handled per linked Discord channel.
pub type Cursors = Arc<Mutex<HashMap<u64, u64>>>;

/// The processor of gateway events.
pub struct Inbound {
    shared: Arc<Shared>,
    relay: Relay<Discord>,
    shutdown: CancellationToken,
    /// The newest message id handled per linked channel, as stored under `last_seen:{channel}`.
    /// Kept by the bridge across runs, so a store that lost its keys (a Redis restart without
    /// persistence) does not make the next run take a gap for a first start.
    last_seen: Cursors,
    retry_tx: mpsc::UnboundedSender<(u32, GatewayEvent)>,
    retry_rx: mpsc::UnboundedReceiver<(u32, GatewayEvent)>,
}

/// Where a Discord event happened, as far as the bridge is concerned.
enum Location {
    /// A linked channel (`thread` is the thread's id when it happened in one of its threads);
    /// the engine decides which of its links relay.
    Linked { chat: u64, thread: Option<u64> },
    /// A DM with the bot.
    Direct,
    /// Anywhere else: not relayed.
    Elsewhere,
}

impl Inbound {
    pub fn new(
        shared: Arc<Shared>,
        relay: Relay<Discord>,
        shutdown: CancellationToken,
        last_seen: Cursors,
    ) -> Self {
        let (retry_tx, retry_rx) = mpsc::unbounded_channel();
        Self {
            shared,
            relay,
            shutdown,
            last_seen,
            retry_tx,
            retry_rx,
        }
    }

    /// Processes events until `shutdown` or until the gateway side is gone.
    pub async fn run(mut self, mut events: mpsc::Receiver<GatewayEvent>) {
        let mut batch = Vec::with_capacity(64);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                received = events.recv_many(&mut batch, 64) => {
                    if received == 0 {
                        return;
                    }
                    // Serenity runs each handler call in a task of its own, so events that
                    // arrived together can reach this queue out of order. Let the other handler
                    // tasks hand theirs over first (a few yields: microseconds, not a delay),
                    // then put the messages back in id order.
                    for _ in 0..STRAGGLER_YIELDS {
                        tokio::task::yield_now().await;
                        while let Ok(event) = events.try_recv() {
                            batch.push(event);
                        }
                    }
                    order(&mut batch);
                    for event in batch.drain(..) {
                        self.handle_safely(event, 0).await;
                    }
                }
                Some((attempt, event)) = self.retry_rx.recv() => self.handle_safely(event, attempt).await,
            }
        }
    }

    /// Handles one event; a panic in it is counted and logged, and the next event is handled
    /// (SPEC section 9: one event's failure never stops the bridge).
    async fn handle_safely(&mut self, event: GatewayEvent, attempt: u32) {
        let kind = event.kind();
        let hub = self.shared.hub.clone();
        handle_event(hub.metrics(), "discord", kind, self.handle(event, attempt)).await;
    }

    async fn handle(&mut self, event: GatewayEvent, attempt: u32) {
        match event {
            GatewayEvent::Ready { user_id, name } => {
                tracing::info!(bot = %name, "Discord session ready; catching up the linked channels");
                self.shared.set_bot_id(user_id);
                self.catch_up().await;
            }
            GatewayEvent::Resumed => tracing::debug!("Discord session resumed"),
            GatewayEvent::Message(message, received) => {
                self.message(*message, Some(received)).await;
            }
            GatewayEvent::Update(update) => self.update(update, attempt).await,
            GatewayEvent::Delete {
                channel_id,
                message_id,
                guild_id,
            } => self.delete(channel_id, message_id, guild_id, attempt).await,
            GatewayEvent::Reaction { reaction, added } => {
                self.reaction(reaction, added, attempt).await;
            }
            GatewayEvent::Typing(typing) => self.typing(&typing).await,
        }
    }

    /// Tries an event again shortly: its message may be right behind it in the queue.
    fn defer(&self, event: GatewayEvent, attempt: u32) -> bool {
        if attempt >= DEFER_ATTEMPTS {
            return false;
        }
        let retry = self.retry_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(DEFER_STEP).await;
            let _ = retry.send((attempt + 1, event));
        });
        true
    }

    fn ignored(&self, reason: &'static str) {
        self.relay.ignored(reason);
    }

    /// Runs a store operation until it succeeds (the engine's [`Relay::until_stored`]): inbound
    /// events wait unacknowledged and the cursor does not move. `None` only when the run stops.
    async fn store<T, F, Fut>(&self, what: &str, op: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.relay.until_stored(what, None, op).await
    }

    /// Hands a platform event to the engine, waiting for the store. `None` only when the run
    /// stops.
    async fn publish(&self, what: &str, event: &PlatformEvent) -> Option<Handled> {
        self.store(what, || self.relay.publish(event)).await
    }

    /// Publishes a change to a message (an edit, a delete, a reaction); one whose message is not
    /// mapped yet is tried again shortly as `retry`, and counted after the last attempt.
    async fn publish_change(
        &self,
        what: &str,
        event: &PlatformEvent,
        retry: GatewayEvent,
        attempt: u32,
    ) {
        let handled = self.publish(what, event).await;
        if handled == Some(Handled::Unmapped) && !self.defer(retry, attempt) {
            self.ignored("unmapped_message");
        }
    }

    /// Where an event in `channel_id` happened; looks the channel up once when it is not linked
    /// (a thread of a linked channel?).
    async fn locate(&self, channel_id: u64, guild_id: Option<u64>) -> Location {
        if self.is_linked(channel_id) {
            return Location::Linked {
                chat: channel_id,
                thread: None,
            };
        }
        if guild_id.is_none() {
            return Location::Direct;
        }
        match self.shared.channel_info(channel_id).await {
            Ok(info) if info.is_thread => match info.parent_id {
                Some(parent) if self.is_linked(parent) => Location::Linked {
                    chat: parent,
                    thread: Some(channel_id),
                },
                _ => Location::Elsewhere,
            },
            Ok(_) => Location::Elsewhere,
            Err(error) => {
                tracing::debug!(%error, channel_id, "unlinked channel could not be looked up; event ignored");
                Location::Elsewhere
            }
        }
    }

    /// Whether any link (relaying or stopped) names a Discord channel.
    fn is_linked(&self, channel: u64) -> bool {
        self.relay.links().is_linked(&Chat(channel.to_string()))
    }

    /// The links of a Discord channel that still relay.
    fn links_of(&self, channel: u64) -> Vec<Link> {
        self.relay.links().of_chat(&Chat(channel.to_string()))
    }
}

/// A linked channel, or a thread in it, as the engine names it.
fn place(chat: u64, thread: Option<u64>) -> Place {
    Place::on_platform(
        Chat(chat.to_string()),
        thread.map(|thread| ThreadRef(thread.to_string())),
    )
}

/// A Discord user as the hub sees them; notices to them ping them.
fn person(user: u64, name: String) -> Person {
    Person {
        id: ExternalId::new(crate::PLATFORM, user.to_string()),
        name,
        addressed_as: format!("<@{user}>"),
        mention: Some(user.to_string()),
    }
}

/// Handles messages that arrived together in creation order (see the module doc); everything
/// else keeps its place relative to them.
fn order(batch: &mut Vec<GatewayEvent>) {
    let positions: Vec<usize> = batch
        .iter()
        .enumerate()
        .filter(|(_, event)| matches!(event, GatewayEvent::Message(..)))
        .map(|(index, _)| index)
        .collect();
    if positions.len() < 2 {
        return;
    }
    // Take the messages out (from the back, so the positions stay valid), sort them, and put
    // them back into the same slots (from the front, for the same reason).
    let mut messages: Vec<GatewayEvent> = positions
        .iter()
        .rev()
        .map(|index| batch.remove(*index))
        .collect();
    messages.reverse();
    messages.sort_by_key(|event| match event {
        GatewayEvent::Message(message, _) => message.id.get(),
        _ => 0,
    });
    for (index, event) in positions.into_iter().zip(messages) {
        batch.insert(index, event);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serenity::model::channel::Message;

    use super::*;

    fn message(id: u64) -> GatewayEvent {
        let mut message = Message::default();
        message.id = id.into();
        GatewayEvent::Message(Box::new(message), Instant::now())
    }

    fn ids(batch: &[GatewayEvent]) -> Vec<u64> {
        batch
            .iter()
            .map(|event| match event {
                GatewayEvent::Message(message, _) => message.id.get(),
                _ => 0,
            })
            .collect()
    }

    #[test]
    fn messages_queued_together_are_handled_in_creation_order() {
        let mut batch = vec![message(30), GatewayEvent::Resumed, message(10), message(20)];
        order(&mut batch);
        assert_eq!(ids(&batch), vec![10, 0, 20, 30]);
        let mut single = vec![GatewayEvent::Resumed, message(5)];
        order(&mut single);
        assert_eq!(ids(&single), vec![0, 5]);
    }
}
