//! The message-id map (SPEC section 3): which platform messages show which hub message, kept in
//! the store for [`MessageMap::KEEP`], so edits, deletes, reactions and replies keep working
//! across restarts.
//!
//! Two kinds of key under `{prefix}bridge:msgmap:{platform}:`:
//! - `hub:{hubMessageId}:{chat}` -> JSON array of the platform message ids showing it in that chat
//!   (every part of a split message, in order);
//! - `{chat}:{platformMessageId}` -> the hub message id. This key is also the claim that makes
//!   [`MessageMap::claim_ops`] exactly-once.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use crate::bridge::HubHandle;
use crate::event::{now_millis, ChannelEvent, Envelope, Origin, Source};
use crate::store::{Keys, Op, Reply, Store, StoreError};

/// The platform <-> hub message-id map.
#[derive(Clone)]
pub struct MessageMap {
    store: Arc<dyn Store>,
    keys: Keys,
}

impl MessageMap {
    /// How long a mapping is kept: at least the 7 days SPEC asks, plus a day of slack.
    pub const KEEP: Duration = Duration::from_secs(8 * 24 * 3600);

    pub fn new(hub: &HubHandle) -> Self {
        Self {
            store: hub.store_arc(),
            keys: hub.keys().clone(),
        }
    }

    fn forward_key(&self, platform: &dyn Display, hub_message_id: &str, chat: &str) -> String {
        self.keys.msgmap_forward(platform, hub_message_id, chat)
    }

    fn reverse_key(&self, platform: &dyn Display, chat: &str, message_id: &str) -> String {
        self.keys.msgmap_reverse(platform, chat, message_id)
    }

    /// The ops that [`MessageMap::record_parts`] runs, for callers that batch them with others.
    pub fn record_ops(
        &self,
        platform: impl Display,
        hub_message_id: &str,
        chat: &str,
        parts: &[String],
    ) -> Vec<Op> {
        let forward = Op::Set {
            key: self.forward_key(&platform, hub_message_id, chat),
            value: serde_json::to_string(parts).unwrap_or_default(),
            ttl: Some(Self::KEEP),
            only_if_absent: false,
        };
        let reverse = parts.iter().map(|part| Op::Set {
            key: self.reverse_key(&platform, chat, part),
            value: hub_message_id.to_owned(),
            ttl: Some(Self::KEEP),
            only_if_absent: false,
        });
        std::iter::once(forward).chain(reverse).collect()
    }

    /// Records the platform messages (all parts, in order) that show a hub message in `chat`,
    /// replacing what was recorded before.
    pub async fn record_parts(
        &self,
        platform: impl Display,
        hub_message_id: &str,
        chat: &str,
        parts: &[String],
    ) -> Result<(), StoreError> {
        let ops = self.record_ops(&platform, hub_message_id, chat, parts);
        self.store.exec(ops).await.map(drop)
    }

    /// The platform message ids showing a hub message in `chat`; empty when none are known.
    pub async fn parts(
        &self,
        platform: impl Display,
        hub_message_id: &str,
        chat: &str,
    ) -> Result<Vec<String>, StoreError> {
        let read = self.parts_read(platform, hub_message_id, chat);
        Ok(Self::parts_of(self.store.one(read).await?))
    }

    /// The read of [`Self::parts`], for callers that batch it with others; [`Self::parts_of`]
    /// reads its reply.
    pub fn parts_read(&self, platform: impl Display, hub_message_id: &str, chat: &str) -> Op {
        Op::Get {
            key: self.forward_key(&platform, hub_message_id, chat),
        }
    }

    /// The platform message ids in the reply to [`Self::parts_read`].
    pub fn parts_of(reply: Reply) -> Vec<String> {
        reply
            .into_text()
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default()
    }

    /// The hub message a platform message shows (or was published as).
    pub async fn hub_id(
        &self,
        platform: impl Display,
        chat: &str,
        message_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let key = self.reverse_key(&platform, chat, message_id);
        Ok(self.store.one(Op::Get { key }).await?.into_text())
    }

    /// The ops that publish a platform message's event unless that platform message was published
    /// before, and map it to `hub_message_id`: claim and publish are one atomic step, so a crash
    /// at any point neither loses nor duplicates it. The first op replies 1 when it published.
    pub fn claim_ops(
        &self,
        platform: impl Display,
        chat: &str,
        message_id: &str,
        hub_message_id: &str,
        event: &ChannelEvent,
        origin: &Origin,
    ) -> Vec<Op> {
        let publish = Op::PublishOnce {
            claim_key: self.reverse_key(&platform, chat, message_id),
            claim_value: hub_message_id.to_owned(),
            ttl: Self::KEEP,
            channel: Source::Channel(event.channel_id().to_owned()).channel_name(),
            payload: Envelope::new(event, now_millis())
                .with_origin(origin)
                .to_json(),
        };
        // The forward record shares the round trip; NX, so that a duplicate delivery never
        // overwrites what was recorded since.
        let forward = Op::Set {
            key: self.forward_key(&platform, hub_message_id, chat),
            value: serde_json::to_string(&[message_id]).unwrap_or_default(),
            ttl: Some(Self::KEEP),
            only_if_absent: true,
        };
        vec![publish, forward]
    }

    /// Forgets a hub message's platform messages in `chat` (after they were deleted).
    pub async fn forget(
        &self,
        platform: impl Display,
        hub_message_id: &str,
        chat: &str,
    ) -> Result<(), StoreError> {
        let parts = self.parts(&platform, hub_message_id, chat).await?;
        let mut ops: Vec<Op> = parts
            .iter()
            .map(|part| Op::Del {
                key: self.reverse_key(&platform, chat, part),
            })
            .collect();
        ops.push(Op::Del {
            key: self.forward_key(&platform, hub_message_id, chat),
        });
        self.store.exec(ops).await.map(drop)
    }
}
