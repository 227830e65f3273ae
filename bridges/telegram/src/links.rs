//! The link table: which Telegram chats mirror which hub channels (N:M), and which links stopped
//! relaying because their hub channel was archived or deleted. Stopped links are kept in the
//! store (`{prefix}bridge:telegram:stopped`), so a restart does not bring them back to life.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use hub_bridge_sdk::{HubHandle, Op, StoreError};

use crate::config::TelegramLink;

/// The configured links and their state.
pub struct Links {
    by_chat: HashMap<i64, Vec<String>>,
    by_channel: HashMap<String, Vec<i64>>,
    // A std mutex: read and written without awaiting.
    stopped: Mutex<HashSet<(String, i64)>>,
}

impl Links {
    pub fn new(links: &[TelegramLink]) -> Self {
        let mut by_chat: HashMap<i64, Vec<String>> = HashMap::new();
        let mut by_channel: HashMap<String, Vec<i64>> = HashMap::new();
        for link in links {
            by_chat
                .entry(link.chat)
                .or_default()
                .push(link.channel.clone());
            by_channel
                .entry(link.channel.clone())
                .or_default()
                .push(link.chat);
        }
        Self {
            by_chat,
            by_channel,
            stopped: Mutex::default(),
        }
    }

    fn stopped(&self) -> std::sync::MutexGuard<'_, HashSet<(String, i64)>> {
        self.stopped.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether any link names this chat (relaying or stopped).
    pub fn is_linked(&self, chat: i64) -> bool {
        self.by_chat.contains_key(&chat)
    }

    /// The hub channels this chat still relays to.
    pub fn channels_of(&self, chat: i64) -> Vec<String> {
        let stopped = self.stopped();
        self.by_chat
            .get(&chat)
            .into_iter()
            .flatten()
            .filter(|channel| !stopped.contains(&((*channel).clone(), chat)))
            .cloned()
            .collect()
    }

    /// The chats this hub channel still relays to.
    pub fn chats_of(&self, channel: &str) -> Vec<i64> {
        let stopped = self.stopped();
        self.by_channel
            .get(channel)
            .into_iter()
            .flatten()
            .copied()
            .filter(|chat| !stopped.contains(&(channel.to_owned(), *chat)))
            .collect()
    }

    /// Every chat with at least one relaying link, each once.
    pub fn active_chats(&self) -> BTreeSet<i64> {
        let stopped = self.stopped();
        self.by_chat
            .iter()
            .filter(|(chat, channels)| {
                channels
                    .iter()
                    .any(|channel| !stopped.contains(&(channel.clone(), **chat)))
            })
            .map(|(chat, _)| *chat)
            .collect()
    }

    /// Stops the link between `channel` and `chat`, here and in the store.
    pub async fn stop(&self, hub: &HubHandle, channel: &str, chat: i64) -> Result<(), StoreError> {
        self.stopped().insert((channel.to_owned(), chat));
        hub.store()
            .one(Op::SAdd {
                key: Self::key(hub),
                member: member(channel, chat),
            })
            .await
            .map(drop)
    }

    /// Reads the links stopped in earlier runs.
    pub async fn load_stopped(&self, hub: &HubHandle) -> Result<(), StoreError> {
        let members = hub
            .store()
            .one(Op::SMembers {
                key: Self::key(hub),
            })
            .await?
            .into_list();
        let mut stopped = self.stopped();
        for entry in members {
            if let Some((channel, chat)) = entry.rsplit_once(' ') {
                if let Ok(chat) = chat.parse() {
                    stopped.insert((channel.to_owned(), chat));
                }
            }
        }
        Ok(())
    }

    fn key(hub: &HubHandle) -> String {
        hub.keys().telegram().stopped()
    }
}

fn member(channel: &str, chat: i64) -> String {
    format!("{channel} {chat}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(channel: &str, chat: i64) -> TelegramLink {
        TelegramLink {
            channel: channel.into(),
            chat,
        }
    }

    #[test]
    fn links_are_many_to_many_and_stopping_one_leaves_the_others() {
        let links = Links::new(&[link("A", -1), link("A", -2), link("B", -1)]);
        assert_eq!(links.chats_of("A"), vec![-1, -2]);
        assert_eq!(links.channels_of(-1), vec!["A".to_owned(), "B".to_owned()]);
        links.stopped().insert(("A".into(), -1));
        assert_eq!(links.chats_of("A"), vec![-2]);
        assert_eq!(links.channels_of(-1), vec!["B".to_owned()]);
        assert!(links.is_linked(-1));
        assert!(!links.is_linked(-3));
        assert_eq!(
            links.active_chats().into_iter().collect::<Vec<_>>(),
            vec![-2, -1]
        );
    }
}
