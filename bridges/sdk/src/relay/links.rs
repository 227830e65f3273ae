//! The link table of one platform: which platform chats mirror which hub channels (N:M), and
//! which links stopped relaying because their hub channel was archived or deleted.
//!
//! Stopped links are one set in the store per platform (`{prefix}bridge:{platform}:stopped`,
//! members `{hubChannel} {chat}`), so a restart does not bring them back to life; to relay a
//! stopped link again, remove its member from that set.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::bridge::HubHandle;
use crate::relay::connector::Chat;
use crate::store::{Op, StoreError};

/// One configured link.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Link {
    pub hub_channel: String,
    pub chat: Chat,
}

impl Link {
    pub fn new(hub_channel: impl Into<String>, chat: Chat) -> Self {
        Self {
            hub_channel: hub_channel.into(),
            chat,
        }
    }

    fn member(&self) -> String {
        format!("{} {}", self.hub_channel, self.chat)
    }
}

/// The configured links and which of them stopped.
pub struct Links {
    platform: &'static str,
    all: Vec<Link>,
    // A std mutex: read and written without awaiting.
    stopped: Mutex<HashSet<Link>>,
}

impl Links {
    pub fn new(platform: &'static str, links: impl IntoIterator<Item = Link>) -> Self {
        let mut all: Vec<Link> = Vec::new();
        for link in links {
            if !all.contains(&link) {
                all.push(link);
            }
        }
        Self {
            platform,
            all,
            stopped: Mutex::default(),
        }
    }

    fn stopped(&self) -> MutexGuard<'_, HashSet<Link>> {
        self.stopped.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every configured link, relaying or stopped, in the config's order.
    pub fn all(&self) -> &[Link] {
        &self.all
    }

    /// Whether any link names this chat (relaying or stopped).
    pub fn is_linked(&self, chat: &Chat) -> bool {
        self.all.iter().any(|link| &link.chat == chat)
    }

    /// Whether this link is the first configured one of its chat. Its map entries use the bare
    /// chat; further links of the same chat (N:M) are told apart by their hub channel.
    pub fn is_first_of_chat(&self, link: &Link) -> bool {
        self.all.iter().find(|other| other.chat == link.chat) == Some(link)
    }

    /// The links of a chat that still relay.
    pub fn of_chat(&self, chat: &Chat) -> Vec<Link> {
        let stopped = self.stopped();
        self.all
            .iter()
            .filter(|link| &link.chat == chat && !stopped.contains(*link))
            .cloned()
            .collect()
    }

    /// The links of a hub channel that still relay.
    pub fn of_channel(&self, hub_channel: &str) -> Vec<Link> {
        let stopped = self.stopped();
        self.all
            .iter()
            .filter(|link| link.hub_channel == hub_channel && !stopped.contains(*link))
            .cloned()
            .collect()
    }

    /// Every chat with at least one relaying link, each once.
    pub fn active_chats(&self) -> BTreeSet<Chat> {
        let stopped = self.stopped();
        self.all
            .iter()
            .filter(|link| !stopped.contains(*link))
            .map(|link| link.chat.clone())
            .collect()
    }

    /// Stops a link, here and in the store.
    pub async fn stop(&self, hub: &HubHandle, link: &Link) -> Result<(), StoreError> {
        self.stopped().insert(link.clone());
        hub.store()
            .one(Op::SAdd {
                key: self.key(hub),
                member: link.member(),
            })
            .await
            .map(drop)
    }

    /// Reads the links stopped in earlier runs; `legacy` names, per link, a key an earlier release
    /// set when it stopped that link (such links join the set).
    pub async fn load_stopped(
        &self,
        hub: &HubHandle,
        legacy: &[(Link, String)],
    ) -> Result<(), StoreError> {
        let mut ops = vec![Op::SMembers { key: self.key(hub) }];
        ops.extend(
            legacy
                .iter()
                .map(|(_, key)| Op::Exists { key: key.clone() }),
        );
        let mut replies = hub.store().exec(ops).await?.into_iter();
        let members: HashSet<String> = replies
            .next()
            .map(crate::store::Reply::into_list)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut adopted = Vec::new();
        {
            let mut stopped = self.stopped();
            for link in &self.all {
                if members.contains(&link.member()) {
                    stopped.insert(link.clone());
                }
            }
            for ((link, _), reply) in legacy.iter().zip(replies) {
                if reply.as_int().unwrap_or(0) > 0 && stopped.insert(link.clone()) {
                    adopted.push(link.clone());
                }
            }
        }
        for link in adopted {
            self.stop(hub, &link).await?;
        }
        Ok(())
    }

    fn key(&self, hub: &HubHandle) -> String {
        hub.keys().relay(self.platform).stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(channel: &str, chat: &str) -> Link {
        Link::new(channel, Chat(chat.to_owned()))
    }

    #[test]
    fn links_are_many_to_many_and_stopping_one_leaves_the_others() {
        let links = Links::new(
            "test",
            [
                link("A", "-1"),
                link("A", "-2"),
                link("B", "-1"),
                link("A", "-1"),
            ],
        );
        assert_eq!(links.all().len(), 3, "a repeated link counts once");
        assert_eq!(
            links.of_channel("A"),
            vec![link("A", "-1"), link("A", "-2")]
        );
        assert!(links.is_first_of_chat(&link("A", "-1")));
        assert!(!links.is_first_of_chat(&link("B", "-1")));
        links.stopped().insert(link("A", "-1"));
        assert_eq!(links.of_channel("A"), vec![link("A", "-2")]);
        assert_eq!(links.of_chat(&Chat("-1".into())), vec![link("B", "-1")]);
        assert!(links.is_linked(&Chat("-1".into())));
        assert!(!links.is_linked(&Chat("-3".into())));
        assert_eq!(links.active_chats().len(), 2);
    }
}
