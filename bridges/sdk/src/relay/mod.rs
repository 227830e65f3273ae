//! The relay engine: everything about relaying between the hub and a platform that is the same on
//! every platform, written once. A platform implements [`Connector`] (its calls, its rendering,
//! its errors); [`Relay`] owns the rest:
//!
//! - the link table and stopped links ([`links`]);
//! - routing of every hub event (SPEC section 5) to jobs for the linked chats, never back to the
//!   chat an event came from ([`route`](Relay::route));
//! - the durable ordered outbox of each chat, and what a job does there ([`perform`]): sending
//!   every part of a message, mapping the parts to the hub message, reconciling a message's parts
//!   on an edit or a delete, reactions, platform threads for hub threads, notices;
//! - streamed answers: newer texts taken into the queued job, edits spaced by the chat's cadence
//!   (`streaming`);
//! - typing indicators outside the outboxes ([`typing`]);
//! - on the way in: publishing what people do on the platform ([`PlatformEvent`]) into the linked
//!   channels once, with the inbound rate limit and its notice, waiting for the store (`inbound`);
//! - dead letters with the reason, and the agent told;
//! - the handover mark: how far routing has handed hub events to the outboxes, so the instance
//!   that takes the bridge over next relays what comes after it ([`crate::handover`]);
//! - the records that make edits, replies and threads work across restarts ([`records`]).

pub mod budget;
pub mod connector;
mod handed;
mod inbound;
pub mod job;
pub mod links;
mod perform;
pub mod records;
mod route;
mod streaming;
pub mod typing;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bridge::{BridgeError, HubHandle};
use crate::msgmap::MessageMap;
use crate::outbox::Outboxes;
use crate::store::StoreError;
use streaming::{Cadence, ShownParts};

pub use connector::{
    Author, Capabilities, Chat, Connector, Edited, Look, MediaLimits, Parent, PartId, Place,
    ReactionChange, Rendered, Rendering, ThreadRef, Upload,
};
pub use inbound::{
    Handled, LimitNotice, Person, PlatformEvent, Readiness, Said, SharedFile, Whisper,
};
pub use job::Job;
pub use links::{Link, Links};
pub use records::Records;
pub use typing::Typing;

/// The relay of one platform.
pub struct Relay<C: Connector> {
    core: Arc<Core<C>>,
    outboxes: Outboxes<Job<C::Part>>,
}

impl<C: Connector> Clone for Relay<C> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
            outboxes: self.outboxes.clone(),
        }
    }
}

/// What the routing and the outbox workers share.
pub(crate) struct Core<C: Connector> {
    connector: Arc<C>,
    hub: HubHandle,
    links: Links,
    map: MessageMap,
    records: Records,
    typing: Typing<C>,
    cadence: Cadence,
    shown_parts: ShownParts,
    /// How far routing has handed hub events to the outboxes (the handover mark).
    handed: handed::Handed,
    shutdown: CancellationToken,
}

impl<C: Connector> Relay<C> {
    /// A relay whose workers run on `tasks` until `shutdown`.
    pub fn new(
        connector: Arc<C>,
        hub: HubHandle,
        links: Links,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let name = connector.name();
        let core = Arc::new(Core {
            typing: Typing::new(connector.clone(), tasks.clone(), shutdown.clone()),
            cadence: Cadence::default(),
            shown_parts: ShownParts::default(),
            map: MessageMap::new(&hub),
            records: Records::new(hub.store_arc(), hub.keys().clone(), name),
            handed: handed::Handed::new(&hub, name),
            connector,
            hub: hub.clone(),
            links,
            shutdown: shutdown.clone(),
        });
        let marks = core.clone();
        let marks_hub = hub.clone();
        let marks_stop = shutdown.clone();
        tasks.spawn(async move { marks.handed.keep_writing(marks_hub, marks_stop).await });
        let outboxes =
            Outboxes::durable_upgrading(name, core.clone(), hub, tasks, shutdown, C::upgrade_job);
        Self { core, outboxes }
    }

    /// [`Self::new`], then [`Self::resume`]: the relay of a bridge's run, with what earlier runs
    /// left read back. The stopped links must be known before anything is relayed, so a store that
    /// cannot be read fails the start (transient: the supervisor tries again), and what the relay
    /// started meanwhile is stopped (`shutdown` is cancelled).
    pub async fn start(
        connector: Arc<C>,
        hub: HubHandle,
        links: Links,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Self, BridgeError> {
        let relay = Self::new(connector, hub, links, tasks, shutdown.clone());
        if let Err(error) = relay.resume().await {
            shutdown.cancel();
            return Err(BridgeError::Transient(format!(
                "store unavailable at start: {error}"
            )));
        }
        Ok(relay)
    }

    /// Reads what earlier runs left: the stopped links, then the queued jobs (which start again).
    pub async fn resume(&self) -> Result<usize, StoreError> {
        let legacy: Vec<(Link, String)> = self
            .core
            .links
            .all()
            .iter()
            .filter_map(|link| {
                let key = self.core.connector.legacy_stopped_key(link)?;
                Some((link.clone(), key))
            })
            .collect();
        self.core
            .links
            .load_stopped(&self.core.hub, &legacy)
            .await?;
        self.outboxes.recover().await
    }

    pub fn connector(&self) -> &C {
        &self.core.connector
    }

    pub fn hub(&self) -> &HubHandle {
        &self.core.hub
    }

    pub fn links(&self) -> &Links {
        &self.core.links
    }

    pub fn map(&self) -> &MessageMap {
        &self.core.map
    }

    pub fn records(&self) -> &Records {
        &self.core.records
    }

    /// Queues a notice from the bridge to a chat (rate-limit warnings, command answers), counted
    /// as `event_type`, pinging `mention` where the platform can.
    pub async fn notice(
        &self,
        chat: &Chat,
        text: impl Into<String>,
        event_type: &str,
        mention: Option<String>,
    ) {
        self.outboxes
            .push(&chat.0, Job::notice(text, event_type, mention))
            .await;
    }

    /// The chat under which the message map keeps what was shown in `place`.
    pub fn map_chat(&self, place: &Place) -> String {
        self.core.map_chat(place)
    }
}

impl<C: Connector> Core<C> {
    /// The connector's map chat, told apart per hub channel for every link of a chat but the
    /// first (N:M): one platform message can then be published once into each linked channel.
    fn map_chat(&self, place: &Place) -> String {
        let base = self.connector.map_chat(place);
        match &place.hub_channel {
            Some(hub_channel)
                if !self
                    .links
                    .is_first_of_chat(&Link::new(hub_channel.clone(), place.chat.clone())) =>
            {
                format!("{base}/{hub_channel}")
            }
            _ => base,
        }
    }

    fn count_ignored(&self, reason: &'static str) {
        self.hub
            .metrics()
            .count_ignored(self.connector.name(), reason);
    }
}

/// A place in a chat outside any thread.
fn home(chat: &Chat, hub_channel: Option<&str>) -> Place {
    Place {
        chat: chat.clone(),
        hub_channel: hub_channel.map(str::to_owned),
        thread: None,
    }
}

/// A short plain name for a thread from the start of a message's Markdown: one line of words
/// without markup markers or control characters, at most [`THREAD_NAME_CHARS`] chars; "Thread"
/// when nothing is left.
pub fn thread_name(text: Option<&str>) -> String {
    let words: Vec<String> = text
        .unwrap_or_default()
        .split_whitespace()
        .map(|word| {
            word.chars()
                .filter(|c| !c.is_control() && !matches!(c, '*' | '`' | '#' | '~' | '|' | '>'))
                .collect::<String>()
        })
        .filter(|word| !word.is_empty())
        .collect();
    let line = words.join(" ");
    if line.is_empty() {
        return "Thread".to_owned();
    }
    if line.chars().count() <= THREAD_NAME_CHARS {
        return line;
    }
    let cut: String = line.chars().take(THREAD_NAME_CHARS - 1).collect();
    format!("{}…", cut.trim_end())
}

/// The longest thread name the engine makes, in chars: Telegram allows 128 UTF-16 units and
/// Discord 100 chars, so even an excerpt of emoji fits both.
pub const THREAD_NAME_CHARS: usize = 60;

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn thread_names_are_short_plain_excerpts() {
        assert_eq!(thread_name(None), "Thread");
        assert_eq!(thread_name(Some("  **`#`**\n\t ")), "Thread");
        assert_eq!(
            thread_name(Some("## Shall we **ship**\nthe `v2`?\u{7}")),
            "Shall we ship the v2?"
        );
        let long = thread_name(Some(&"word ".repeat(40)));
        assert_eq!(long.chars().count(), THREAD_NAME_CHARS);
        assert!(long.ends_with("word…"), "{long}");
        assert_eq!(
            thread_name(Some(&"🚀".repeat(200))).chars().count(),
            THREAD_NAME_CHARS
        );
    }
}
