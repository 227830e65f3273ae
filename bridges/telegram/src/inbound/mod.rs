//! Telegram -> hub: the bridge's own getUpdates loop and the mapping of each update onto hub
//! events (SPEC sections 5 and 6).
//!
//! Delivery is at least once on Telegram's side and exactly once on the hub's: the update offset
//! is stored under `{prefix}bridge:telegram:{botId}:offset` and advanced only after an update's events are
//! published, and every publish claims a key in the same atomic step (the platform message id for
//! messages, the update id otherwise), so an update delivered again after a crash publishes
//! nothing new. While the store is unreachable the update is retried, never skipped.
//!
//! Chapters: `updates` (each kind of update read into the relay engine's platform events) and
//! `describe` (speakers, names and media descriptions).

mod describe;
mod updates;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use hub_bridge_sdk::health::Component;
use hub_bridge_sdk::relay::Readiness;
use hub_bridge_sdk::{BridgeError, Op, StoreError};
use teloxide::prelude::*;
use teloxide::types::{AllowedUpdate, UpdateKind};
use teloxide::{ApiError, RequestError};

use crate::bridge::Shared;

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The update kinds the bridge asks for; reactions and member changes are only sent on request.
const ALLOWED: [AllowedUpdate; 5] = [
    AllowedUpdate::Message,
    AllowedUpdate::EditedMessage,
    AllowedUpdate::MessageReaction,
    AllowedUpdate::ChatMember,
    AllowedUpdate::MyChatMember,
];

/// Polls Telegram and publishes what arrives, until the bridge stops. Returns an error only for
/// what a restart cannot cure (a rejected token).
pub async fn run(shared: Arc<Shared>, status: Component) -> Result<(), BridgeError> {
    let inbound = Inbound { shared: &shared };
    let offset_key = shared.hub.keys().telegram().offset(shared.me_id);
    let legacy_key = shared.hub.keys().telegram().legacy_offset();
    let Some(mut offset) = inbound.load_offset(&offset_key, &legacy_key, &status).await else {
        return Ok(());
    };
    let ready = format!("polling Telegram as @{}", shared.me_username);
    status.ready(&ready);
    let mut backoff = Duration::from_secs(1);
    let mut album = Album::default();
    loop {
        // While an album is open, a short poll tells whether more of it is coming.
        let timeout = if album.is_open() {
            ALBUM_WAIT_SECS
        } else {
            shared.config.poll_timeout_secs
        };
        let mut request = shared
            .bot
            .get_updates()
            .timeout(timeout)
            .allowed_updates(ALLOWED);
        if let Some(offset) = offset {
            request = request.offset(offset);
        }
        let polled = tokio::select! {
            _ = shared.shutdown.cancelled() => return Ok(()),
            polled = request.into_future() => polled,
        };
        let updates = match polled {
            Ok(updates) => updates,
            Err(error) => {
                let wait = match &error {
                    RequestError::Api(ApiError::InvalidToken) => {
                        return Err(BridgeError::Unauthorized {
                            platform: "telegram",
                            detail: "getUpdates: the bot token was rejected".to_owned(),
                        });
                    }
                    RequestError::RetryAfter(wait) => wait.duration(),
                    RequestError::Api(ApiError::CantGetUpdates) => {
                        // A webhook and getUpdates exclude each other; this bridge polls.
                        tracing::warn!("a webhook is set for this bot; deleting it to poll");
                        if let Err(error) = shared.bot.delete_webhook().await {
                            tracing::warn!(error = %shared.redactor.describe(&error), "could not delete the webhook");
                        }
                        backoff
                    }
                    _ => backoff,
                };
                let detail = shared.redactor.describe(&error);
                tracing::warn!(error = %detail, retry_in = ?wait, "getUpdates failed");
                status.not_ready(&format!("Telegram getUpdates failing: {detail}"));
                backoff = (backoff * 2).min(MAX_BACKOFF);
                if !inbound.sleep(wait).await {
                    return Ok(());
                }
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        status.ready(&ready);
        let Some(last) = updates.last().map(|update| update.id.0) else {
            // Nothing more came: the album is whole, and the offset can pass it.
            if album.is_open() {
                if !inbound.close_album(&mut album, &status, &ready).await {
                    return Ok(());
                }
                if let Some(next) = offset {
                    inbound.store_offset(&offset_key, next).await;
                }
            }
            continue;
        };
        for update in updates {
            let update = match album.offer(update) {
                Offered::Taken => continue,
                Offered::Closes(update) => {
                    if !inbound.close_album(&mut album, &status, &ready).await {
                        return Ok(());
                    }
                    match album.offer(update) {
                        Offered::Taken => continue,
                        Offered::Closes(update) | Offered::Other(update) => update,
                    }
                }
                Offered::Other(update) => update,
            };
            if !inbound.handle_until_done(&update, &status, &ready).await {
                return Ok(());
            }
        }
        // Telegram forgets everything below the offset, so it moves only now that every update
        // of the batch is published; an open album's updates stay above the stored offset, so a
        // crash before it closes brings them again (their claims keep what was published once).
        let next = i32::try_from(last.saturating_add(1)).unwrap_or(i32::MAX);
        offset = Some(next);
        let stored = album
            .first_update()
            .map_or(next, |first| i32::try_from(first).unwrap_or(i32::MAX));
        inbound.store_offset(&offset_key, stored).await;
        shared.relay.connector().budget.prune();
    }
}

/// How long, in seconds, an album waits for its next part (Telegram sends an album's parts as
/// separate updates, usually in one batch).
const ALBUM_WAIT_SECS: u32 = 1;

/// A Telegram album being gathered: the updates of one `media_group_id` in one chat, published as
/// one hub message when a different update or a quiet poll shows it is whole.
#[derive(Default)]
struct Album {
    parts: Vec<Update>,
}

/// What [`Album::offer`] did with an update.
enum Offered {
    /// A part of the open album (or the first part of a new one).
    Taken,
    /// A part of another album while one is open: close the open one, then offer it again.
    Closes(Update),
    /// Not an album's part.
    Other(Update),
}

impl Album {
    fn is_open(&self) -> bool {
        !self.parts.is_empty()
    }

    fn first_update(&self) -> Option<u32> {
        self.parts.first().map(|update| update.id.0)
    }

    fn offer(&mut self, update: Update) -> Offered {
        let Some(key) = album_key(&update) else {
            return if self.is_open() {
                Offered::Closes(update)
            } else {
                Offered::Other(update)
            };
        };
        match self.parts.first().and_then(album_key) {
            Some(open) if open != key => Offered::Closes(update),
            _ => {
                self.parts.push(update);
                Offered::Taken
            }
        }
    }
}

/// The chat and media group of a group message that belongs to an album. Private messages go to
/// agents as text, one by one.
fn album_key(update: &Update) -> Option<(i64, String)> {
    let UpdateKind::Message(message) = &update.kind else {
        return None;
    };
    if message.chat.is_private() {
        return None;
    }
    let group = message.media_group_id()?;
    Some((message.chat.id.0, group.0.clone()))
}

struct Inbound<'a> {
    shared: &'a Shared,
}

impl Inbound<'_> {
    /// Sleeps unless the bridge stops first; false when it stopped.
    async fn sleep(&self, wait: Duration) -> bool {
        tokio::select! {
            _ = self.shared.shutdown.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }

    /// The stored offset (`None` before the first update ever); waits for the store. `None` from
    /// the outer option means the bridge stopped meanwhile.
    ///
    /// Versions before the offset was keyed by bot kept it under `legacy_key`. When the bot's key
    /// is absent and that one exists, it is taken over once (moved to the bot's key and deleted):
    /// the old key cannot say which bot it belonged to, so an upgrade that also changes the token
    /// starts the new bot from that offset once, which at worst skips updates the new bot never
    /// had below it (Telegram's update ids are per bot).
    async fn load_offset(
        &self,
        key: &str,
        legacy_key: &str,
        status: &Component,
    ) -> Option<Option<i32>> {
        let readiness = Readiness {
            status,
            ready: "read the Telegram offset",
        };
        self.shared
            .relay
            .until_stored("offset", Some(&readiness), || {
                self.read_offset(key, legacy_key)
            })
            .await
    }

    async fn read_offset(&self, key: &str, legacy_key: &str) -> Result<Option<i32>, StoreError> {
        let store = self.shared.hub.store();
        let get = |key: &str| Op::Get {
            key: key.to_owned(),
        };
        let mut replies = store
            .exec(vec![get(key), get(legacy_key)])
            .await?
            .into_iter();
        let parse = |reply: Option<hub_bridge_sdk::Reply>| {
            reply
                .and_then(|reply| reply.into_text())
                .and_then(|text| text.parse::<i32>().ok())
        };
        let current = parse(replies.next());
        let legacy = parse(replies.next());
        let (None, Some(legacy)) = (current, legacy) else {
            return Ok(current);
        };
        tracing::info!(
            offset = legacy,
            "taking over the Telegram offset stored before it was keyed by bot"
        );
        store
            .exec(vec![
                Op::Set {
                    key: key.to_owned(),
                    value: legacy.to_string(),
                    ttl: None,
                    only_if_absent: false,
                },
                Op::Del {
                    key: legacy_key.to_owned(),
                },
            ])
            .await?;
        Ok(Some(legacy))
    }

    async fn store_offset(&self, key: &str, offset: i32) {
        let stored = self
            .shared
            .hub
            .store()
            .one(Op::Set {
                key: key.to_owned(),
                value: offset.to_string(),
                ttl: None,
                only_if_absent: false,
            })
            .await;
        if let Err(error) = stored {
            // The claims keep a redelivery from publishing twice; the next batch stores it.
            tracing::warn!(%error, "could not store the Telegram offset");
        }
    }

    /// Publishes the open album as one message (retrying while the store is unreachable) and
    /// empties it; false when the bridge stopped.
    async fn close_album(&self, album: &mut Album, status: &Component, ready: &str) -> bool {
        if !album.is_open() {
            return true;
        }
        let readiness = Readiness { status, ready };
        let parts = std::mem::take(&mut album.parts);
        self.shared
            .relay
            .handle_until_stored("album", Some(&readiness), || self.album(&parts))
            .await
    }

    /// Handles one update, retrying while the store is unreachable; false when the bridge stopped.
    async fn handle_until_done(&self, update: &Update, status: &Component, ready: &str) -> bool {
        let readiness = Readiness { status, ready };
        self.shared
            .relay
            .handle_until_stored("update", Some(&readiness), || self.handle(update))
            .await
    }
}
