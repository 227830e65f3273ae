//! What the relay engine keeps in the store besides the message map (SPEC section 3), all under
//! `{prefix}bridge:` and kept as long as the map ([`MessageMap::KEEP`]), thread maps longer
//! ([`THREAD_KEEP`], threads live long):
//!
//! - `{platform}:look:{hubMessageId}`: how a relayed message looks ([`Look`]), for its edits;
//! - `{platform}:header:{hubMessageId}:{chat}`: what the connector put before its text in one
//!   chat ([`Look::header`]), for its edits there;
//! - `thread:{threadId}` and `threadof:{hubMessageId}`: which hub message a hub thread hangs on,
//!   and the reverse (platform-neutral: the hub's own threads);
//! - `{platform}:topic:{chat}:{threadId}` and `{platform}:topicthread:{chat}:{platformThread}`:
//!   the platform thread showing a hub thread in a chat, both ways ("topic" is kept in the key
//!   from the first release, where only Telegram's forum topics had them);
//! - `{platform}:in_thread:{hubMessageId}:{chat}`: the platform thread a message was shown in;
//! - `{platform}:reactions:{chat}:{partId}`: the agents' standing reactions on a part.

use std::sync::Arc;
use std::time::Duration;

use crate::msgmap::MessageMap;
use crate::relay::connector::{Look, PartId, ThreadRef};
use crate::store::{Keys, Op, Store, StoreError};

/// How long a hub thread's platform thread is remembered.
pub const THREAD_KEEP: Duration = Duration::from_secs(90 * 24 * 3600);
const KEEP: Duration = MessageMap::KEEP;

/// The engine's records of one platform.
#[derive(Clone)]
pub struct Records {
    store: Arc<dyn Store>,
    keys: Keys,
    platform: &'static str,
}

/// An agent's reaction standing on a part: (agent, emoji), oldest first.
pub type Standing = Vec<(String, String)>;

impl Records {
    pub fn new(store: Arc<dyn Store>, keys: Keys, platform: &'static str) -> Self {
        Self {
            store,
            keys,
            platform,
        }
    }

    fn key(&self) -> crate::keys::RelayKeys<'_> {
        self.keys.relay(self.platform)
    }

    fn set(key: String, value: String, ttl: Duration) -> Op {
        Op::Set {
            key,
            value,
            ttl: Some(ttl),
            only_if_absent: false,
        }
    }

    async fn get(&self, key: String) -> Result<Option<String>, StoreError> {
        Ok(self.store.one(Op::Get { key }).await?.into_text())
    }

    pub async fn look(&self, hub_message_id: &str) -> Result<Option<Look>, StoreError> {
        let json = self.get(self.key().look(hub_message_id)).await?;
        Ok(json.and_then(|json| serde_json::from_str(&json).ok()))
    }

    /// How a message looks in `chat` (a map chat): the shared look with the chat's header.
    pub async fn look_in(
        &self,
        hub_message_id: &str,
        chat: &str,
    ) -> Result<Option<Look>, StoreError> {
        let ops = vec![
            Op::Get {
                key: self.key().look(hub_message_id),
            },
            Op::Get {
                key: self.header_key(hub_message_id, chat),
            },
            Op::Get {
                key: self.key().file_parts(hub_message_id, chat),
            },
        ];
        let mut replies = self.store.exec(ops).await?.into_iter();
        let look: Option<Look> = replies
            .next()
            .and_then(crate::store::Reply::into_text)
            .and_then(|json| serde_json::from_str(&json).ok());
        let header = replies.next().and_then(crate::store::Reply::into_text);
        let file_parts = replies
            .next()
            .and_then(crate::store::Reply::into_text)
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default();
        Ok(look.map(|look| Look {
            header,
            file_parts,
            ..look
        }))
    }

    /// Records how a message looks; its header and its file parts (if any) for `chat` (a map
    /// chat) only.
    pub fn look_ops(&self, hub_message_id: &str, chat: &str, look: &Look) -> Vec<Op> {
        let shared = Look {
            header: None,
            file_parts: Vec::new(),
            ..look.clone()
        };
        let mut ops = vec![Self::set(
            self.key().look(hub_message_id),
            serde_json::to_string(&shared).unwrap_or_default(),
            KEEP,
        )];
        if let Some(header) = &look.header {
            ops.push(Self::set(
                self.header_key(hub_message_id, chat),
                header.clone(),
                KEEP,
            ));
        }
        if !look.file_parts.is_empty() {
            ops.push(Self::set(
                self.key().file_parts(hub_message_id, chat),
                serde_json::to_string(&look.file_parts).unwrap_or_default(),
                KEEP,
            ));
        }
        ops
    }

    fn header_key(&self, hub_message_id: &str, chat: &str) -> String {
        self.key().header(hub_message_id, chat)
    }

    /// Records which hub message a hub thread hangs on, both ways.
    pub fn thread_root_ops(&self, thread_id: &str, parent: &str) -> Vec<Op> {
        vec![
            Self::set(self.keys.thread_root(thread_id), parent.to_owned(), KEEP),
            Self::set(self.keys.thread_of(parent), thread_id.to_owned(), KEEP),
        ]
    }

    /// The hub message a hub thread hangs on.
    pub async fn thread_root(&self, thread_id: &str) -> Result<Option<String>, StoreError> {
        self.get(self.keys.thread_root(thread_id)).await
    }

    /// The hub thread a hub message is in or starts.
    pub async fn thread_of(&self, hub_message_id: &str) -> Result<Option<String>, StoreError> {
        self.get(self.thread_of_key(hub_message_id)).await
    }

    /// The key of [`Records::thread_of`], for callers that batch it with other ops.
    pub fn thread_of_key(&self, hub_message_id: &str) -> String {
        self.keys.thread_of(hub_message_id)
    }

    /// Records that a hub message is in a hub thread (a person's message published into it).
    pub fn thread_of_op(&self, hub_message_id: &str, thread_id: &str) -> Op {
        Self::set(
            self.thread_of_key(hub_message_id),
            thread_id.to_owned(),
            KEEP,
        )
    }

    /// The platform thread showing a hub thread in `chat` (a map chat).
    pub async fn platform_thread(
        &self,
        chat: &str,
        thread_id: &str,
    ) -> Result<Option<ThreadRef>, StoreError> {
        let id = self.get(self.key().thread(chat, thread_id)).await?;
        Ok(id.map(ThreadRef))
    }

    /// The hub thread a platform thread of `chat` shows.
    pub async fn hub_thread(
        &self,
        chat: &str,
        thread: &ThreadRef,
    ) -> Result<Option<String>, StoreError> {
        self.get(self.hub_thread_key(chat, thread)).await
    }

    /// The key of [`Records::hub_thread`], for callers that batch it with other ops.
    pub fn hub_thread_key(&self, chat: &str, thread: &ThreadRef) -> String {
        self.key().hub_thread(chat, &thread.0)
    }

    pub async fn record_platform_thread(
        &self,
        chat: &str,
        thread_id: &str,
        thread: &ThreadRef,
    ) -> Result<(), StoreError> {
        let ops = self.platform_thread_ops(chat, thread_id, thread);
        self.store.exec(ops).await.map(drop)
    }

    /// Records the platform thread showing a hub thread in `chat` (a map chat), both ways, for
    /// callers that batch it with other ops (a platform thread a person opened, published as
    /// `thread.create` in the same round trip).
    pub fn platform_thread_ops(&self, chat: &str, thread_id: &str, thread: &ThreadRef) -> Vec<Op> {
        vec![
            Self::set(
                self.key().thread(chat, thread_id),
                thread.0.clone(),
                THREAD_KEEP,
            ),
            Self::set(
                self.hub_thread_key(chat, thread),
                thread_id.to_owned(),
                THREAD_KEEP,
            ),
        ]
    }

    /// The platform thread a hub message was shown in, in `chat` (the link's own map chat).
    pub async fn shown_in(
        &self,
        hub_message_id: &str,
        chat: &str,
    ) -> Result<Option<ThreadRef>, StoreError> {
        let id = self.get(self.key().shown_in(hub_message_id, chat)).await?;
        Ok(id.map(ThreadRef))
    }

    /// The read of [`Self::shown_in`], for callers that batch it with others: replies the
    /// thread's id as text, or nil.
    pub fn shown_in_read(&self, hub_message_id: &str, chat: &str) -> Op {
        Op::Get {
            key: self.key().shown_in(hub_message_id, chat),
        }
    }

    pub fn shown_in_op(&self, hub_message_id: &str, chat: &str, thread: &ThreadRef) -> Op {
        Self::set(
            self.key().shown_in(hub_message_id, chat),
            thread.0.clone(),
            KEEP,
        )
    }

    pub async fn reactions(&self, chat: &str, part: &PartId) -> Result<Standing, StoreError> {
        let json = self.get(self.key().reactions(chat, &part.0)).await?;
        Ok(json
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default())
    }

    pub async fn record_reactions(
        &self,
        chat: &str,
        part: &PartId,
        standing: &Standing,
    ) -> Result<(), StoreError> {
        let op = Self::set(
            self.key().reactions(chat, &part.0),
            serde_json::to_string(standing).unwrap_or_default(),
            KEEP,
        );
        self.store.one(op).await.map(drop)
    }
}
