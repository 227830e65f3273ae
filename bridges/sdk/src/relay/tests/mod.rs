//! The relay engine against a connector in memory: what a new platform plugs into, and what every
//! platform gets from the engine (routing of every hub event type, no echo, stopped links,
//! multi-part edits and deletes, reactions, threads, direct messages, notices).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bridge::{AgentProfile, Delivery, HubHandle};
use crate::event::{parse, Source};
use crate::fence::Fence;
use crate::handover::EventId;
use crate::limits::{LimitsConfig, RateLimiter};
use crate::metrics::Metrics;
use crate::outbox::SendError;
use crate::relay::budget::FloodBudget;
use crate::relay::connector::{
    Capabilities, Chat, Connector, Edited, PartId, Place, ReactionChange, Rendered, Rendering,
    ThreadRef,
};
use crate::relay::{Link, Links, Relay};
use crate::store::memory::MemoryStore;
use crate::store::{Keys, Op, Store};

mod inbound;
mod media;
mod streaming;

/// One call the engine made, as the platform saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Send {
        chat: String,
        thread: Option<String>,
        text: String,
        reply_to: Option<String>,
        id: String,
    },
    Edit {
        chat: String,
        id: String,
        text: String,
    },
    Delete {
        chat: String,
        id: String,
    },
    React {
        id: String,
        after: Vec<String>,
    },
    Typing {
        chat: String,
    },
    OpenThread {
        chat: String,
        parent: Option<String>,
        name: String,
    },
    Upload {
        chat: String,
        /// Each file's name, bytes and whether it is shown as a picture.
        files: Vec<(String, Vec<u8>, bool)>,
        caption: Option<String>,
        reply_to: Option<String>,
        ids: Vec<String>,
    },
}

/// A platform in memory: parts of at most [`LIMIT`] chars, the author's name before the text,
/// threads that hang on a message (as on Discord) or not at all.
struct Memory {
    capabilities: Capabilities,
    calls: Mutex<Vec<Call>>,
    next_id: AtomicU64,
    /// Sends are refused for good while set.
    refuse_sends: std::sync::atomic::AtomicBool,
    /// A store that fails the next `exec` right after the next send (the record of that part).
    fail_store_after_send: Mutex<Option<Arc<MemoryStore>>>,
    /// How far apart edits of one message go (none unless a test sets it).
    edit_cadence: Duration,
    /// When each edit call was made.
    edited_at: Mutex<Vec<tokio::time::Instant>>,
    /// The flood budget requests draw from, when a test gives one.
    budget: Option<FloodBudget>,
    /// The next send is answered with a 429 asking to wait this long.
    retry_after_once: Mutex<Option<Duration>>,
    /// What files it uploads (none unless a test sets it); a caption longer than `LIMIT` does
    /// not go with them.
    media_limits: Option<crate::relay::connector::MediaLimits>,
    /// Uploads are refused for good while set.
    refuse_uploads: std::sync::atomic::AtomicBool,
}

const LIMIT: usize = 12;

impl Memory {
    fn new(open_threads_on_demand: bool, reactions_per_message: usize) -> Self {
        Self {
            capabilities: Capabilities {
                reactions_per_message,
                typing_refresh: Duration::from_secs(5),
                open_threads_on_demand,
                threads_are_chats: open_threads_on_demand,
            },
            calls: Mutex::default(),
            next_id: AtomicU64::new(100),
            refuse_sends: std::sync::atomic::AtomicBool::new(false),
            fail_store_after_send: Mutex::default(),
            edit_cadence: Duration::ZERO,
            edited_at: Mutex::default(),
            budget: None,
            retry_after_once: Mutex::default(),
            media_limits: None,
            refuse_uploads: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }
}

impl Connector for Memory {
    type Part = String;

    fn name(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn private_chat(&self, user_id: &str) -> Option<Chat> {
        Some(Chat(format!("dm:{user_id}")))
    }

    fn edit_cadence(&self, _chat: &Chat) -> Duration {
        self.edit_cadence
    }

    fn budget(&self) -> Option<&FloodBudget> {
        self.budget.as_ref()
    }

    fn legacy_thread_key(&self, chat: &str, thread_id: &str) -> Option<String> {
        Some(format!("t:legacy:thread:{chat}:{thread_id}"))
    }

    fn legacy_stopped_key(&self, link: &Link) -> Option<String> {
        Some(format!(
            "t:legacy:stopped:{}:{}",
            link.hub_channel, link.chat
        ))
    }

    fn render<'a>(
        &'a self,
        _place: &'a Place,
        message: Rendering<'a>,
    ) -> BoxFuture<'a, Result<Rendered<String>, SendError>> {
        Box::pin(async move {
            let name = message.look.author.as_ref().map(|a| a.name.clone());
            let text = match name {
                Some(name) => format!("{name}: {}", message.text),
                None => message.text.to_owned(),
            };
            let chars: Vec<char> = text.chars().collect();
            Ok(Rendered {
                parts: chars.chunks(LIMIT).map(|c| c.iter().collect()).collect(),
                header: None,
                native_reply: true,
            })
        })
    }

    fn render_notice(&self, text: &str, _mention: Option<&str>) -> Vec<String> {
        vec![text.to_owned()]
    }

    fn send<'a>(
        &'a self,
        place: &'a Place,
        part: &'a mut String,
        reply_to: Option<&'a PartId>,
        shown: &'a mut Vec<PartId>,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            if self.refuse_sends.load(Ordering::Relaxed) {
                return Err(SendError::Permanent("chat not found".to_owned()));
            }
            if let Some(wait) = self.retry_after_once.lock().unwrap().take() {
                return Err(SendError::RetryAfter(wait));
            }
            let _permit = match &self.budget {
                Some(budget) => Some(budget.acquire(&place.chat.0).await),
                None => None,
            };
            let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
            self.record(Call::Send {
                chat: place.chat.0.clone(),
                thread: place.thread.as_ref().map(|t| t.0.clone()),
                text: part.clone(),
                reply_to: reply_to.map(|r| r.0.clone()),
                id: id.clone(),
            });
            shown.push(PartId(id));
            if let Some(store) = self.fail_store_after_send.lock().unwrap().take() {
                store.fail_next(1);
            }
            Ok(())
        })
    }

    fn edit<'a>(
        &'a self,
        place: &'a Place,
        id: &'a PartId,
        part: &'a String,
    ) -> BoxFuture<'a, Result<Edited, SendError>> {
        Box::pin(async move {
            self.edited_at
                .lock()
                .unwrap()
                .push(tokio::time::Instant::now());
            self.record(Call::Edit {
                chat: place.chat.0.clone(),
                id: id.0.clone(),
                text: part.clone(),
            });
            Ok(Edited::Done)
        })
    }

    fn delete<'a>(
        &'a self,
        place: &'a Place,
        id: &'a PartId,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            self.record(Call::Delete {
                chat: place.chat.0.clone(),
                id: id.0.clone(),
            });
            Ok(())
        })
    }

    fn react<'a>(
        &'a self,
        _place: &'a Place,
        id: &'a PartId,
        change: &'a ReactionChange,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            self.record(Call::React {
                id: id.0.clone(),
                after: change.after.clone(),
            });
            Ok(())
        })
    }

    fn typing<'a>(&'a self, place: &'a Place) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            self.record(Call::Typing {
                chat: place.chat.0.clone(),
            });
            Ok(())
        })
    }

    fn media_limits(&self) -> Option<crate::relay::connector::MediaLimits> {
        self.media_limits
    }

    fn upload<'a>(
        &'a self,
        place: &'a Place,
        _look: &'a crate::relay::connector::Look,
        files: &'a [crate::relay::connector::Upload],
        caption: Option<&'a String>,
        reply_to: Option<&'a PartId>,
        shown: &'a mut Vec<PartId>,
    ) -> BoxFuture<'a, Result<bool, SendError>> {
        Box::pin(async move {
            if self.refuse_uploads.load(Ordering::Relaxed) {
                return Err(SendError::Permanent("IMAGE_PROCESS_FAILED".to_owned()));
            }
            // One platform message per file, the caption on the first.
            let ids: Vec<String> = files
                .iter()
                .map(|_| self.next_id.fetch_add(1, Ordering::Relaxed).to_string())
                .collect();
            self.record(Call::Upload {
                chat: place.chat.0.clone(),
                files: files
                    .iter()
                    .map(|file| (file.name.clone(), file.bytes.to_vec(), file.as_image))
                    .collect(),
                caption: caption.cloned(),
                reply_to: reply_to.map(|r| r.0.clone()),
                ids: ids.clone(),
            });
            shown.extend(ids.into_iter().map(PartId));
            Ok(caption.is_some())
        })
    }

    fn open_thread<'a>(
        &'a self,
        place: &'a Place,
        parent: Option<&'a PartId>,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ThreadRef>, SendError>> {
        Box::pin(async move {
            self.record(Call::OpenThread {
                chat: place.chat.0.clone(),
                parent: parent.map(|p| p.0.clone()),
                name: name.to_owned(),
            });
            // A chat without threads (a Telegram group that is not a forum) opens none.
            let threads = self.capabilities.open_threads_on_demand;
            Ok(parent
                .filter(|_| threads)
                .map(|p| ThreadRef(format!("thread-of-{}", p.0))))
        })
    }
}

/// A relay over the memory connector, linked A <-> chats 1 and 2, B <-> chat 1.
struct Harness {
    relay: Relay<Memory>,
    connector: Arc<Memory>,
    store: Arc<MemoryStore>,
    hub: HubHandle,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Harness {
    fn new(connector: Memory) -> Self {
        Self::with_store(connector, Arc::new(MemoryStore::default()))
    }

    fn with_store(connector: Memory, store: Arc<MemoryStore>) -> Self {
        Self::with_limits(connector, store, LimitsConfig::default())
    }

    fn with_limits(connector: Memory, store: Arc<MemoryStore>, limits: LimitsConfig) -> Self {
        Self::build(connector, store, limits, |hub| hub)
    }

    /// A harness whose hub handle `adjust` finishes (the media desk, say).
    fn build(
        connector: Memory,
        store: Arc<MemoryStore>,
        limits: LimitsConfig,
        adjust: impl FnOnce(HubHandle) -> HubHandle,
    ) -> Self {
        let keys = Keys::new("t:");
        let dyn_store: Arc<dyn Store> = store.clone();
        let limiter = RateLimiter::new(dyn_store.clone(), keys.clone(), limits);
        let mut agents = BTreeMap::new();
        agents.insert(
            "ada".to_owned(),
            AgentProfile {
                name: Some("Ada".to_owned()),
                ..AgentProfile::default()
            },
        );
        let hub = adjust(HubHandle::new(
            dyn_store,
            keys,
            limiter,
            agents,
            Arc::new(Metrics::default()),
        ));
        let connector = Arc::new(connector);
        let links = Links::new(
            "memory",
            [
                Link::new("A", Chat("1".into())),
                Link::new("A", Chat("2".into())),
                Link::new("B", Chat("1".into())),
            ],
        );
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let relay = Relay::new(
            connector.clone(),
            hub.clone(),
            links,
            tasks.clone(),
            shutdown.clone(),
        );
        Self {
            relay,
            connector,
            store,
            hub,
            tasks,
            shutdown,
        }
    }

    /// Routes a hub event as if it arrived on `source`, and waits until its jobs are done.
    async fn hub_event(&self, source: Source, payload: Value) {
        let inbound = parse(&source, payload.to_string().as_bytes()).expect("a valid hub event");
        let delivery = Delivery {
            id: EventId::of(&source.channel_name(), payload.to_string().as_bytes()),
            source,
            inbound,
            received_at: Instant::now(),
        };
        self.relay.route(&delivery).await;
        self.settle().await;
    }

    async fn channel(&self, channel: &str, event: Value) {
        self.hub_event(Source::Channel(channel.to_owned()), event)
            .await;
    }

    async fn say(&self, channel: &str, id: &str, sender: &str, content: &str) {
        self.channel(
            channel,
            json!({"type": "channel.message", "channelId": channel, "message": {
                "id": id, "content": content, "senderId": sender, "timestamp": 1}}),
        )
        .await;
    }

    async fn thread_create(&self, channel: &str, thread: &str, parent: &str) {
        self.channel(
            channel,
            json!({"type": "thread.create", "channelId": channel, "thread": {
                "id": thread, "parentMessageId": parent, "createdBy": "ada", "createdAt": 1,
                "replyCount": 0}}),
        )
        .await;
    }

    async fn say_in_thread(&self, channel: &str, thread: &str, id: &str, content: &str) {
        self.channel(
            channel,
            json!({"type": "thread.message", "channelId": channel, "threadId": thread,
                   "message": {"id": id, "content": content, "senderId": "ada",
                               "timestamp": 1}}),
        )
        .await;
    }

    async fn edit(&self, channel: &str, id: &str, content: &str) {
        self.channel(
            channel,
            json!({"type": "channel.message.edit", "channelId": channel, "messageId": id,
                   "content": content}),
        )
        .await;
    }

    /// Waits until the outbox workers have nothing left to do.
    async fn settle(&self) {
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    fn sends(&self) -> Vec<(String, Option<String>, String, Option<String>)> {
        self.connector
            .calls()
            .into_iter()
            .filter_map(|call| match call {
                Call::Send {
                    chat,
                    thread,
                    text,
                    reply_to,
                    ..
                } => Some((chat, thread, text, reply_to)),
                _ => None,
            })
            .collect()
    }

    fn clear(&self) {
        self.connector.calls.lock().unwrap().clear();
    }

    async fn parts(&self, hub_id: &str, chat: &str) -> Vec<String> {
        self.relay
            .map()
            .parts("memory", hub_id, chat)
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn text(call: &(String, Option<String>, String, Option<String>)) -> &str {
    &call.2
}

#[tokio::test]
async fn a_message_reaches_every_linked_chat_in_parts_and_is_mapped() {
    let h = Harness::new(Memory::new(true, 1));
    h.say("A", "m1", "ada", "hello there, everyone").await;
    let sends = h.sends();
    // "Ada: hello there, everyone" is 26 chars: three parts in each of chats 1 and 2.
    assert_eq!(sends.len(), 6, "{sends:?}");
    let joined: String = sends.iter().filter(|s| s.0 == "1").map(text).collect();
    assert_eq!(joined, "Ada: hello there, everyone");
    assert_eq!(h.parts("m1", "1").await, vec!["100", "101", "102"]);
    assert_eq!(h.parts("m1", "2").await.len(), 3);
    // Chat 1's second link (B) is not involved: A's message is mapped under the bare chat.
    assert!(h.parts("m1", "1/B").await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn nothing_is_echoed_to_the_chat_it_came_from() {
    let h = Harness::new(Memory::new(true, 1));
    let envelope = json!({
        "event": {"type": "channel.message", "channelId": "A", "message": {
            "id": "m1", "content": "hi", "senderId": "external:telegram:7", "timestamp": 1}},
        "timestamp": 1, "channelId": "A", "origin": "memory:1"});
    h.channel("A", envelope).await;
    let mut chats: Vec<String> = h.sends().into_iter().map(|s| s.0).collect();
    chats.dedup();
    assert_eq!(chats, vec!["2".to_owned()], "only the other chat");
    h.stop().await;
}

#[tokio::test]
async fn an_edit_changes_shared_parts_adds_new_ones_and_removes_the_rest() {
    let h = Harness::new(Memory::new(true, 1));
    h.say("B", "m1", "ada", "short").await;
    // B is chat 1's second link: its map chat is told apart.
    assert_eq!(h.parts("m1", "1/B").await, vec!["100"]);
    h.clear();
    h.edit("B", "m1", "a good deal longer now").await;
    let calls = h.connector.calls();
    assert_eq!(
        calls[0],
        Call::Edit {
            chat: "1".into(),
            id: "100".into(),
            text: "Ada: a good ".into()
        }
    );
    assert_eq!(calls.len(), 3, "one edit and two new parts: {calls:?}");
    let parts = h.parts("m1", "1/B").await;
    assert_eq!(parts.len(), 3);
    h.clear();
    h.edit("B", "m1", "tiny").await;
    let calls = h.connector.calls();
    assert!(matches!(&calls[0], Call::Edit { text, .. } if text == "Ada: tiny"));
    assert_eq!(
        &calls[1..],
        &[
            Call::Delete {
                chat: "1".into(),
                id: parts[1].clone()
            },
            Call::Delete {
                chat: "1".into(),
                id: parts[2].clone()
            },
        ]
    );
    assert_eq!(h.parts("m1", "1/B").await, vec![parts[0].clone()]);
    h.clear();
    h.channel(
        "B",
        json!({"type": "channel.message.delete", "channelId": "B", "messageId": "m1"}),
    )
    .await;
    assert_eq!(
        h.connector.calls(),
        vec![Call::Delete {
            chat: "1".into(),
            id: parts[0].clone()
        }]
    );
    assert!(h.parts("m1", "1/B").await.is_empty(), "forgotten");
    h.stop().await;
}

#[tokio::test]
async fn edits_and_reactions_of_unknown_messages_make_no_call() {
    let h = Harness::new(Memory::new(true, 1));
    h.edit("B", "nope", "x").await;
    h.channel(
        "B",
        json!({"type": "channel.reaction.add", "channelId": "B", "messageId": "nope",
               "emoji": "👍", "agentId": "ada"}),
    )
    .await;
    assert!(h.connector.calls().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn reactions_stand_per_agent_and_the_platform_shows_the_most_recent() {
    let h = Harness::new(Memory::new(true, 1));
    h.say("B", "m1", "ada", "hi").await;
    h.clear();
    let react = |emoji: &str, agent: &str, add: bool| {
        let kind = if add {
            "channel.reaction.add"
        } else {
            "channel.reaction.remove"
        };
        json!({"type": kind, "channelId": "B", "messageId": "m1", "emoji": emoji, "agentId": agent})
    };
    h.channel("B", react("👍", "ada", true)).await;
    h.channel("B", react("🔥", "bob", true)).await;
    h.channel("B", react("🔥", "bob", false)).await;
    let shown: Vec<Vec<String>> = h
        .connector
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            Call::React { after, .. } => Some(after),
            _ => None,
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            vec!["👍".to_owned()],
            vec!["🔥".to_owned()],
            vec!["👍".to_owned()]
        ]
    );
    h.stop().await;
}

#[tokio::test]
async fn a_reaction_that_is_not_an_emoji_is_refused_and_its_agent_told() {
    let h = Harness::new(Memory::new(true, 1));
    h.say("B", "m1", "ada", "hi").await;
    h.clear();
    h.channel(
        "B",
        json!({"type": "channel.reaction.add", "channelId": "B", "messageId": "m1",
               "emoji": "../../x", "agentId": "ada"}),
    )
    .await;
    assert!(h.connector.calls().is_empty());
    let told = h.store.published();
    assert!(
        told.iter()
            .any(|(channel, payload)| channel == "pubsub:agent:ada"
                && payload.contains("was not relayed to Memory")),
        "{told:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_thread_opens_on_its_parent_and_its_messages_go_there() {
    let h = Harness::new(Memory::new(true, 1));
    h.say("B", "root", "ada", "Shall we ship?").await;
    let root = h.parts("root", "1/B").await;
    h.clear();
    h.thread_create("B", "t1", "root").await;
    assert_eq!(
        h.connector.calls(),
        vec![Call::OpenThread {
            chat: "1".into(),
            parent: Some(root[0].clone()),
            name: "Shall we ship?".into()
        }]
    );
    h.clear();
    h.say_in_thread("B", "t1", "m2", "yes").await;
    let sends = h.sends();
    let thread = format!("thread-of-{}", root[0]);
    assert_eq!(sends[0].1.as_deref(), Some(thread.as_str()), "{sends:?}");
    assert_eq!(sends[0].3, None, "no native reply across places");
    // An edit finds the message in its thread.
    h.clear();
    h.edit("B", "m2", "yes!").await;
    assert!(matches!(&h.connector.calls()[0], Call::Edit { text, .. } if text == "Ada: yes!"));
    h.stop().await;
}

#[tokio::test]
async fn without_threads_a_thread_message_answers_the_thread_root() {
    let h = Harness::new(Memory::new(false, 1));
    h.say("B", "root", "ada", "root").await;
    let root = h.parts("root", "1/B").await;
    h.thread_create("B", "t1", "root").await;
    h.clear();
    h.say_in_thread("B", "t1", "m2", "yes").await;
    let sends = h.sends();
    assert_eq!(sends[0].1, None);
    assert_eq!(sends[0].3.as_ref(), Some(&root[0]), "answers the root");
    h.stop().await;
}

#[tokio::test]
async fn an_archived_channel_stops_its_links_for_good_with_one_notice_each() {
    let store = Arc::new(MemoryStore::default());
    let h = Harness::with_store(Memory::new(true, 1), store.clone());
    h.channel(
        "A",
        json!({"type": "channel.archive", "channelId": "A", "archivedBy": "ada"}),
    )
    .await;
    let notices = h.sends();
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert!(notices[0].2.contains("was archived by Ada"), "{notices:?}");
    h.clear();
    h.say("A", "m1", "ada", "anyone?").await;
    assert!(h.sends().is_empty());
    h.say("B", "m2", "ada", "B still").await;
    assert_eq!(h.sends().len(), 1, "B's link is untouched");
    h.stop().await;
    // A new run reads the stopped links back.
    let h = Harness::with_store(Memory::new(true, 1), store);
    h.relay.resume().await.unwrap();
    h.say("A", "m3", "ada", "anyone?").await;
    assert!(h.sends().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn direct_messages_go_to_the_person_only() {
    let h = Harness::new(Memory::new(true, 1));
    let dm = json!({"type": "agent.direct_message", "data": {
        "fromAgent": "ada", "content": "psst"}, "timestamp": 1});
    h.hub_event(Source::Agent("external:memory:42".into()), dm.clone())
        .await;
    h.hub_event(Source::Agent("external:telegram:42".into()), dm.clone())
        .await;
    assert_eq!(
        h.sends(),
        vec![("dm:42".to_owned(), None, "Ada: psst".to_owned(), None)]
    );
    h.stop().await;
}

#[tokio::test]
async fn an_announcement_reaches_each_active_chat_once() {
    let h = Harness::new(Memory::new(true, 1));
    h.hub_event(
        Source::Global,
        json!({"type": "system.announcement", "data": {"message": "maintenance"},
               "timestamp": 1}),
    )
    .await;
    let chats: Vec<String> = h.sends().into_iter().map(|s| s.0).collect();
    assert_eq!(chats, vec!["1".to_owned(), "2".to_owned()]);
    h.stop().await;
}

#[tokio::test]
async fn typing_shows_outside_the_outbox_until_the_message() {
    let h = Harness::new(Memory::new(true, 1));
    h.channel(
        "B",
        json!({"type": "channel.typing", "channelId": "B", "agentId": "ada", "started": true}),
    )
    .await;
    assert_eq!(h.connector.calls(), vec![Call::Typing { chat: "1".into() }]);
    h.say("B", "m1", "ada", "done").await;
    assert_eq!(h.sends().len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn the_engine_keeps_its_records_under_the_platforms_name() {
    let h = Harness::new(Memory::new(true, 1));
    // Records survive the run; the keys are the engine's, under the platform's name.
    h.say("B", "m1", "ada", "hi").await;
    let keys = h.store.text_keys();
    assert!(
        keys.contains(&"t:bridge:memory:look:m1".to_owned()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"t:bridge:msgmap:memory:hub:m1:1/B".to_owned()),
        "{keys:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_refused_relay_is_dead_lettered_with_the_hub_event_and_the_agent_told() {
    let h = Harness::new(Memory::new(true, 1));
    h.connector.refuse_sends.store(true, Ordering::Relaxed);
    h.say("B", "m1", "ada", "hi").await;
    let letters = h
        .hub
        .store()
        .one(Op::LRange {
            key: "t:bridge:deadletter:memory".into(),
            start: 0,
            stop: -1,
        })
        .await
        .unwrap()
        .into_list();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter: Value = serde_json::from_str(&letters[0]).unwrap();
    assert_eq!(letter["destination"], "memory:1");
    assert_eq!(letter["eventType"], "channel.message");
    assert_eq!(letter["reason"], "chat not found");
    assert_eq!(letter["agentId"], "ada");
    assert_eq!(letter["channelId"], "B");
    assert_eq!(letter["payload"]["message"]["id"], "m1");
    let told = h.store.published();
    assert!(
        told.iter()
            .any(|(channel, payload)| channel == "pubsub:agent:ada"
                && payload.contains("could not be delivered")),
        "{told:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_reply_answers_its_parent_natively_in_the_same_place() {
    let h = Harness::new(Memory::new(true, 1));
    h.say("B", "m1", "ada", "question").await;
    let parent = h.parts("m1", "1/B").await;
    h.clear();
    h.channel(
        "B",
        json!({"type": "channel.message", "channelId": "B", "message": {
            "id": "m2", "content": "answer", "senderId": "ada", "timestamp": 1,
            "parentMessageId": "m1"}}),
    )
    .await;
    let sends = h.sends();
    assert_eq!(sends[0].3.as_ref(), Some(&parent[0]), "{sends:?}");
    h.stop().await;
}

#[tokio::test]
async fn what_an_earlier_release_kept_elsewhere_is_honoured() {
    let store = Arc::new(MemoryStore::default());
    store
        .exec(vec![
            Op::Set {
                key: "t:legacy:stopped:A:2".into(),
                value: "1".into(),
                ttl: None,
                only_if_absent: false,
            },
            Op::Set {
                key: "t:legacy:thread:1/B:t-old".into(),
                value: "old-thread".into(),
                ttl: None,
                only_if_absent: false,
            },
        ])
        .await
        .unwrap();
    let h = Harness::with_store(Memory::new(true, 1), store.clone());
    h.relay.resume().await.unwrap();
    h.say("A", "m1", "ada", "hi").await;
    let chats: Vec<String> = h.sends().into_iter().map(|s| s.0).collect();
    assert!(
        chats.iter().all(|chat| chat == "1"),
        "A-2 stays stopped: {chats:?}"
    );
    h.clear();
    h.say_in_thread("B", "t-old", "m2", "more").await;
    assert_eq!(h.sends()[0].1.as_deref(), Some("old-thread"));
    h.stop().await;
    // The stopped link joined the engine's set: it stays stopped without the old key.
    store
        .exec(vec![Op::Del {
            key: "t:legacy:stopped:A:2".into(),
        }])
        .await
        .unwrap();
    let h = Harness::with_store(Memory::new(true, 1), store);
    h.relay.resume().await.unwrap();
    h.say("A", "m3", "ada", "hi").await;
    assert!(h.sends().iter().all(|s| s.0 == "1"));
    h.stop().await;
}

#[tokio::test]
async fn a_person_over_the_limit_is_told_once_and_a_retried_event_counts_once() {
    let limits = LimitsConfig {
        message: 1,
        ..LimitsConfig::default()
    };
    let h = Harness::with_limits(
        Memory::new(true, 1),
        Arc::new(MemoryStore::default()),
        limits,
    );
    let person = "external:memory:7";
    let notice = || {
        Some(crate::relay::LimitNotice {
            chat: Chat("1".into()),
            who: "Bob".into(),
            mention: None,
        })
    };
    let limit = crate::limits::Action::Message;
    assert!(h
        .relay
        .within_limit(limit, person, "m:1", notice())
        .await
        .unwrap());
    // The same event handled again (a retry) keeps its first decision.
    assert!(h
        .relay
        .within_limit(limit, person, "m:1", notice())
        .await
        .unwrap());
    assert!(!h
        .relay
        .within_limit(limit, person, "m:2", notice())
        .await
        .unwrap());
    assert!(!h
        .relay
        .within_limit(limit, person, "m:3", notice())
        .await
        .unwrap());
    h.settle().await;
    let notices = h.sends();
    assert_eq!(notices.len(), 1, "told once per window: {notices:?}");
    assert!(notices[0]
        .2
        .starts_with("⏳ Bob, you are sending messages too fast"));
    h.stop().await;
}

#[tokio::test]
async fn an_event_waits_for_the_store_and_goes_on_when_it_answers() {
    let h = Harness::new(Memory::new(true, 1));
    let attempts = std::sync::atomic::AtomicUsize::new(0);
    let value = h
        .relay
        .until_stored("test", None, || {
            let attempt = attempts.fetch_add(1, Ordering::Relaxed);
            async move {
                if attempt < 2 {
                    Err(crate::store::StoreError::Command("LOADING".into()))
                } else {
                    Ok(attempt)
                }
            }
        })
        .await;
    assert_eq!(value, Some(2));
    // A stopped relay gives up waiting.
    h.shutdown.cancel();
    let never = h
        .relay
        .until_stored("test", None, || async {
            Err::<(), _>(crate::store::StoreError::Command("LOADING".into()))
        })
        .await;
    assert_eq!(never, None);
    h.stop().await;
}

#[tokio::test]
async fn a_part_shown_before_the_store_failed_is_not_shown_again() {
    let h = Harness::new(Memory::new(true, 1));
    *h.connector.fail_store_after_send.lock().unwrap() = Some(h.store.clone());
    h.say("B", "m1", "ada", "hello there, everyone").await;
    // The outbox retries after its backoff; wait for the whole message.
    for _ in 0..100 {
        if h.parts("m1", "1/B").await.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sends = h.sends();
    let joined: String = sends.iter().map(text).collect();
    assert_eq!(
        joined, "Ada: hello there, everyone",
        "each part once: {sends:?}"
    );
    assert_eq!(h.parts("m1", "1/B").await.len(), 3);
    h.stop().await;
}

#[tokio::test]
async fn a_header_is_kept_per_chat_and_never_in_the_shared_look() {
    let store = Arc::new(MemoryStore::default());
    let records = crate::relay::Records::new(store.clone(), Keys::new("t:"), "memory");
    let look = |header: &str| crate::relay::Look {
        header: Some(header.to_owned()),
        topic_name: Some("hi".to_owned()),
        ..crate::relay::Look::default()
    };
    // Two links of one hub channel show the message with different headers.
    store
        .exec(records.look_ops("m1", "1", &look("**Ada**: ")))
        .await
        .unwrap();
    store
        .exec(records.look_ops("m1", "2", &look("")))
        .await
        .unwrap();
    let header = |chat: &'static str| {
        let records = records.clone();
        async move { records.look_in("m1", chat).await.unwrap().unwrap().header }
    };
    assert_eq!(header("1").await.as_deref(), Some("**Ada**: "));
    assert_eq!(header("2").await.as_deref(), Some(""));
    assert_eq!(header("3").await, None, "not shown there");
    let shared = records.look("m1").await.unwrap().unwrap();
    assert_eq!(shared.header, None);
    assert_eq!(shared.topic_name.as_deref(), Some("hi"));
}

/// Agent messages `ids` queued for the bridge, and the id of the last.
async fn queued(ids: &[&str]) -> (mpsc::Receiver<Arc<Delivery>>, Option<EventId>) {
    let (sender, deliveries) = mpsc::channel(8);
    let mut last = None;
    for id in ids {
        let payload = json!({"type": "channel.message", "channelId": "B", "message": {
            "id": id, "content": id, "senderId": "ada", "timestamp": 1}});
        let source = Source::Channel("B".to_owned());
        let inbound = parse(&source, payload.to_string().as_bytes()).expect("a hub event");
        let delivery = Delivery {
            id: EventId::of(&source.channel_name(), payload.to_string().as_bytes()),
            source,
            inbound,
            received_at: Instant::now(),
        };
        last = Some(delivery.id);
        sender.send(Arc::new(delivery)).await.expect("queued");
    }
    (deliveries, last)
}

#[tokio::test]
async fn a_graceful_stop_routes_what_is_still_queued_into_the_durable_outboxes() {
    let h = Harness::new(Memory::new(true, 1));
    let (mut deliveries, last) = queued(&["q1", "q2", "q3"]).await;
    assert_eq!(h.relay.drain(&mut deliveries).await, 3);
    assert!(deliveries.try_recv().is_err(), "nothing left in the queue");
    // The handover mark names the last of them at once: the next holder relays from there.
    let mark = h
        .hub
        .store()
        .one(Op::Get {
            key: h.hub.keys().handed("memory"),
        })
        .await
        .expect("the store answers")
        .into_text()
        .and_then(|text| crate::handover::Mark::parse(&text))
        .expect("a mark");
    assert_eq!(mark.event, last.expect("routed"));
    h.settle().await;
    let texts: Vec<String> = h.sends().iter().map(|send| text(send).to_owned()).collect();
    assert_eq!(texts, vec!["Ada: q1", "Ada: q2", "Ada: q3"]);
    h.stop().await;
}

/// A run that lost the lease (the fence it holds is stale) routes nothing more on stopping: the
/// queued events stay for the supervisor to keep for the next holder.
#[tokio::test]
async fn a_run_that_lost_its_lease_leaves_the_queue_for_the_next_holder() {
    let stale = Fence::new("t:bridge:lease:memory", "elsewhere", 1);
    let h = Harness::build(
        Memory::new(true, 1),
        Arc::new(MemoryStore::default()),
        LimitsConfig::default(),
        |mut hub| {
            hub.set_fence(Some(stale));
            hub
        },
    );
    let (mut deliveries, _) = queued(&["q1", "q2"]).await;
    let stop = CancellationToken::new();
    stop.cancel();
    h.relay.deliver(&mut deliveries, &stop).await;
    assert_eq!(deliveries.len(), 2, "both still queued");
    h.settle().await;
    assert!(h.sends().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_message_already_shown_in_a_chat_is_not_shown_there_again() {
    let h = Harness::new(Memory::new(true, 1));
    let message = json!({"type": "channel.message", "channelId": "B", "message": {
        "id": "once", "content": "once", "senderId": "ada", "timestamp": 1}});
    // As after a takeover: the previous holder showed it, and the new one replays it; and as an
    // agent publishing the same message again, with another timestamp.
    h.hub_event(Source::Channel("B".to_owned()), message.clone())
        .await;
    h.hub_event(Source::Channel("B".to_owned()), message.clone())
        .await;
    let mut again = message;
    again["message"]["timestamp"] = json!(2);
    h.hub_event(Source::Channel("B".to_owned()), again).await;
    let texts: Vec<String> = h.sends().iter().map(|send| text(send).to_owned()).collect();
    assert_eq!(texts, vec!["Ada: once"]);
    h.stop().await;
}
