//! The catch-up after a gap (a failed resume, a restart): each linked channel is read from the
//! last message id seen there, and what was missed is published once. The cursor moves only past
//! what was handled.

use std::sync::PoisonError;
use std::time::Duration;

use hub_bridge_sdk::Op;
use serde_json::Value;
use serenity::model::channel::Message;

use super::{Inbound, MAX_PAGES, PAGE};
use crate::ids;
use crate::rest::RestError;

impl Inbound {
    /// Stores the newest message id seen in a linked channel, where the next catch-up starts.
    pub(super) async fn note_seen(&mut self, channel_id: u64, message_id: u64) {
        if self.links_of(channel_id).is_empty() {
            return;
        }
        {
            let mut last_seen = self
                .last_seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last_seen
                .get(&channel_id)
                .is_some_and(|seen| *seen >= message_id)
            {
                return;
            }
            last_seen.insert(channel_id, message_id);
        }
        let op = Op::Set {
            key: self.shared.keys().last_seen(channel_id),
            value: message_id.to_string(),
            ttl: None,
            only_if_absent: false,
        };
        let store = self.shared.hub.store();
        self.store("last seen", || store.one(op.clone())).await;
    }

    /// Publishes what was posted in the linked channels since the last seen message (a gap: the
    /// service was down, or the gateway reconnected without resuming).
    pub(super) async fn catch_up(&mut self) {
        let channels: Vec<u64> = self
            .relay
            .links()
            .active_chats()
            .iter()
            .filter_map(|chat| ids::parse(&chat.0))
            .collect();
        for channel in channels {
            if self.shutdown.is_cancelled() {
                return;
            }
            if let Err(error) = self.catch_up_channel(channel).await {
                tracing::warn!(%error, channel, "catch-up of a Discord channel failed; the next session start tries again");
            }
        }
    }

    pub(super) async fn catch_up_channel(&mut self, channel: u64) -> Result<(), RestError> {
        let key = self.shared.keys().last_seen(channel);
        let store = self.shared.hub.store();
        let Some(reply) = self
            .store("last seen", || store.one(Op::Get { key: key.clone() }))
            .await
        else {
            return Ok(());
        };
        let guild = self
            .shared
            .channel_info(channel)
            .await
            .ok()
            .and_then(|i| i.guild_id);
        // Our own value, not an id from a message: `0` is the start of a channel that was empty
        // at the first start, and must stay a cursor (read as "no cursor", it skipped the
        // catch-up after a restart).
        let stored = reply.into_text().and_then(|text| text.parse::<u64>().ok());
        let remembered = self
            .last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&channel)
            .copied();
        let Some(mut cursor) = stored.max(remembered) else {
            // The first start on this channel: what came before the bridge is history, not a
            // gap. Start from the newest message (or the beginning of an empty channel).
            let newest = self.fetch(channel, None, 1).await?;
            let start = newest.first().map_or(0, |m| m.id.get());
            let op = Op::Set {
                key,
                value: start.to_string(),
                ttl: None,
                only_if_absent: true,
            };
            self.store("last seen", || store.one(op.clone())).await;
            return Ok(());
        };
        let mut caught_up = 0;
        for _ in 0..MAX_PAGES {
            let mut page = self.fetch(channel, Some(cursor), PAGE).await?;
            page.sort_by_key(|message| message.id);
            let full = page.len() >= PAGE;
            for mut message in page {
                cursor = cursor.max(message.id.get());
                // REST messages leave the guild out; it decides DM vs guild.
                message.guild_id = message.guild_id.or(guild.map(Into::into));
                self.message(message, None).await;
                caught_up += 1;
            }
            if !full {
                if caught_up > 0 {
                    tracing::info!(channel, messages = caught_up, "caught up a Discord channel");
                }
                return Ok(());
            }
        }
        tracing::warn!(
            channel,
            messages = caught_up,
            "catch-up stopped after {MAX_PAGES} pages; older missed messages are skipped"
        );
        Ok(())
    }

    /// Messages of a channel after `after` (oldest `limit`), or the newest `limit`; retries
    /// rate limits and transient errors a few times.
    pub(super) async fn fetch(
        &self,
        channel: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Message>, RestError> {
        let mut params = vec![("limit", limit.to_string())];
        if let Some(after) = after {
            params.push(("after", after.to_string()));
        }
        let mut attempt = 0;
        let values: Vec<Value> = loop {
            let result = self.shared.channel_messages(channel, &params).await;
            attempt += 1;
            let wait = match &result {
                Err(RestError::RateLimited { retry_after, .. }) => *retry_after,
                Err(RestError::Network(_)) => Duration::from_secs(attempt),
                Err(RestError::Status { status, .. }) if *status >= 500 => {
                    Duration::from_secs(attempt)
                }
                _ => break result?,
            };
            if attempt >= 5 {
                break result?;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(Vec::new()),
                () = tokio::time::sleep(wait) => {}
            }
        };
        Ok(values
            .into_iter()
            .filter_map(|value| {
                // Through a string: serde_json's `from_value` misreads some of serenity's types.
                match serde_json::from_str::<Message>(&value.to_string()) {
                    Ok(message) => Some(message),
                    Err(error) => {
                        tracing::debug!(%error, channel, "unreadable message in a catch-up page");
                        None
                    }
                }
            })
            .collect())
    }
}
