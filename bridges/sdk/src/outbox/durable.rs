//! The store side of durable outboxes: each job is a list entry (`{"id", "job"}`) in its
//! destination's list from the moment it is queued until it is delivered or dead-lettered; its
//! progress replaces the entry after a failed attempt; recovery queues what a previous run left.
//! Finishing a job and saving its progress are fenced ([`Op::UpdateJob`]): a run that lost its
//! bridge's lease no longer changes the list the new holder works from.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Deliver, Durability, Entry, Outboxes, Persisted};
use crate::bridge::{DeadLetter, HubHandle};
use crate::event::now_millis;
use crate::store::{Op, Reply, StoreError};

/// Destinations read per round trip when recovering.
const RECOVER_CHUNK: usize = 256;

impl<J: Send + 'static> Outboxes<J> {
    fn list_key(&self, destination: &str) -> String {
        self.inner.hub.keys().outbox(self.inner.bridge, destination)
    }

    fn index_key(&self) -> String {
        self.inner.hub.keys().outboxes(self.inner.bridge)
    }

    fn entry_text(id: &str, job: Value) -> String {
        json!({ "id": id, "job": job }).to_string()
    }

    /// Writes a new job to its destination's list; `None` when not durable or the store is down
    /// (then the job is kept in memory only, and the log says so).
    pub(super) async fn persist(&self, destination: &str, job: &J) -> Option<Persisted> {
        let durability = self.inner.durability.as_ref()?;
        let id = uuid::Uuid::new_v4().to_string();
        let raw = match (durability.encode)(job) {
            Ok(value) => Self::entry_text(&id, value),
            Err(error) => {
                tracing::error!(bridge = self.inner.bridge, %error, "relay cannot be persisted");
                return None;
            }
        };
        let push = Op::PushJob {
            fence: self.inner.hub.fence().cloned(),
            list: self.list_key(destination),
            value: raw.clone(),
            index: self.index_key(),
            member: destination.to_owned(),
        };
        match self.inner.hub.store().one(push).await {
            Ok(Reply::Int(1)) => Some(Persisted {
                id,
                raw,
                superseded: Vec::new(),
            }),
            // The lease's new holder relays this event itself (SPEC section 6); the worker here
            // will not send it either.
            Ok(_) => {
                self.fenced_out();
                None
            }
            Err(error) => {
                tracing::warn!(bridge = self.inner.bridge, destination, %error, "relay kept in memory only: the store is unavailable");
                None
            }
        }
    }

    /// Saves a job's progress after a failed attempt, so a restart resumes it where it was.
    pub(super) async fn save_progress(&self, destination: &str, entry: &mut Entry<J>) {
        let (Some(durability), Some(persisted)) =
            (self.inner.durability.as_ref(), entry.persisted.as_mut())
        else {
            return;
        };
        let Ok(value) = (durability.encode)(&entry.job) else {
            return;
        };
        let raw = Self::entry_text(&persisted.id, value);
        if raw == persisted.raw {
            return;
        }
        // The job being worked on is the oldest: back at the head it stays first.
        let update = self.update_job(destination, persisted, Some(raw.clone()));
        if let Ok(Reply::Int(1)) = self.inner.hub.store().one(update).await {
            persisted.raw = raw;
            persisted.superseded.clear();
        }
    }

    /// Re-encodes a waiting job that took in a newer one; returns its old and new list entries
    /// for [`Self::replace_stored`]. The old entry stays in `superseded` until the job is
    /// removed, in case the worker finishes the job before the replacement is written.
    pub(super) fn restate(&self, entry: &mut Entry<J>) -> Option<(String, String)> {
        let durability = self.inner.durability.as_ref()?;
        let persisted = entry.persisted.as_mut()?;
        let value = (durability.encode)(&entry.job).ok()?;
        let raw = Self::entry_text(&persisted.id, value);
        let old = std::mem::replace(&mut persisted.raw, raw.clone());
        persisted.superseded.push(old.clone());
        Some((old, raw))
    }

    /// Writes a job's new entry where its old one stands, so a restart finds the newest text in
    /// the job's place in line.
    pub(super) async fn replace_stored(&self, destination: &str, old: String, new: String) {
        let replace = Op::LReplace {
            key: self.list_key(destination),
            old,
            new,
        };
        if let Err(error) = self.inner.hub.store().one(replace).await {
            // The job is still stored as it was: after a restart its older text is sent, and
            // the newer one only if another edit follows.
            tracing::warn!(bridge = self.inner.bridge, destination, %error, "a queued relay's newer text was not stored");
        }
    }

    /// The op that takes a job's entry, and any entry it was stored as before, out of its
    /// destination's list, puts `head` (its progress) first instead if there is one, and takes the
    /// destination out of the index when its list is left empty, so the index holds only
    /// destinations with work and recovery stays quick however many chats were served. It runs
    /// only while the run's fence holds: a run that lost its lease leaves the list to the new
    /// holder.
    fn update_job(&self, destination: &str, persisted: &Persisted, head: Option<String>) -> Op {
        Op::UpdateJob {
            fence: self.inner.hub.fence().cloned(),
            list: self.list_key(destination),
            remove: std::iter::once(&persisted.raw)
                .chain(&persisted.superseded)
                .cloned()
                .collect(),
            head,
            index: self.index_key(),
            member: destination.to_owned(),
        }
    }

    /// Ends a job: delivered (`reason` None) or dead-lettered with the reason.
    pub(super) async fn finish(&self, destination: &str, entry: Entry<J>, reason: Option<String>) {
        self.release_share(destination, entry.agent.as_deref());
        if let Some(reason) = reason {
            self.inner
                .deliver
                .dead_letter(destination, entry.job, reason)
                .await;
        }
        let Some(persisted) = entry.persisted else {
            return;
        };
        match self
            .inner
            .hub
            .store()
            .one(self.update_job(destination, &persisted, None))
            .await
        {
            Ok(Reply::Int(1)) => {}
            // The lease's new holder has the job in its list and sends it: at least once.
            Ok(_) => self.fenced_out(),
            // It will be sent again after a restart: at least once, never lost.
            Err(error) => {
                tracing::warn!(bridge = self.inner.bridge, destination, %error, "delivered relay not removed from the store");
            }
        }
    }
}

impl<J: Serialize + DeserializeOwned + Send + 'static> Outboxes<J> {
    /// Outboxes that keep every job in the store until it is delivered or dead-lettered; call
    /// [`Self::recover`] once at start to queue what a previous run left.
    pub fn durable(
        bridge: &'static str,
        deliver: Arc<dyn Deliver<J>>,
        hub: HubHandle,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self::durable_upgrading(bridge, deliver, hub, tasks, shutdown, |_| None)
    }

    /// [`Self::durable`], reading with `upgrade` the jobs an earlier release stored in a shape
    /// of its own.
    pub fn durable_upgrading(
        bridge: &'static str,
        deliver: Arc<dyn Deliver<J>>,
        hub: HubHandle,
        tasks: TaskTracker,
        shutdown: CancellationToken,
        upgrade: fn(Value) -> Option<J>,
    ) -> Self {
        let durability = Durability {
            encode: |job| serde_json::to_value(job),
            decode: serde_json::from_value,
            upgrade,
        };
        Self::build(bridge, deliver, hub, Some(durability), tasks, shutdown)
    }

    /// Queues the jobs a previous run left in the store, oldest first per destination. A job that
    /// can no longer be read is dead-lettered as it was stored. Destinations are read
    /// [`RECOVER_CHUNK`] per round trip, and those left empty leave the index. Returns how many
    /// jobs were queued.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        if self.inner.durability.is_none() {
            return Ok(0);
        }
        let store = self.inner.hub.store();
        let destinations = store
            .one(Op::SMembers {
                key: self.index_key(),
            })
            .await?
            .into_list();
        let mut recovered = 0;
        for chunk in destinations.chunks(RECOVER_CHUNK) {
            let reads = chunk
                .iter()
                .map(|destination| Op::LRange {
                    key: self.list_key(destination),
                    start: 0,
                    stop: -1,
                })
                .collect();
            let lists = store.exec(reads).await?;
            let mut empty = Vec::new();
            for (destination, entries) in chunk.iter().zip(lists) {
                let entries = entries.into_list();
                if entries.is_empty() {
                    empty.push(Op::ForgetIfEmpty {
                        index: self.index_key(),
                        member: destination.clone(),
                        list: self.list_key(destination),
                    });
                    continue;
                }
                recovered += self.requeue(destination, entries).await?;
            }
            if !empty.is_empty() {
                store.exec(empty).await?;
            }
        }
        if recovered > 0 {
            tracing::info!(
                bridge = self.inner.bridge,
                recovered,
                "queued relays left by a previous run"
            );
        }
        Ok(recovered)
    }

    /// Queues one destination's stored entries; returns how many were queued.
    async fn requeue(&self, destination: &str, entries: Vec<String>) -> Result<usize, StoreError> {
        let Some(durability) = self.inner.durability.as_ref() else {
            return Ok(0);
        };
        let key = self.list_key(destination);
        let mut queued = 0;
        for raw in entries {
            let parsed = serde_json::from_str::<Value>(&raw).ok().and_then(|value| {
                let id = value.get("id")?.as_str()?.to_owned();
                let stored = value.get("job")?.clone();
                let job = (durability.decode)(stored.clone())
                    .ok()
                    .or_else(|| (durability.upgrade)(stored))?;
                Some((id, job))
            });
            let Some((id, job)) = parsed else {
                self.dead_letter_unreadable(destination, &key, raw).await?;
                continue;
            };
            let agent = self.inner.deliver.agent(&job);
            if let Some(agent) = &agent {
                self.take_share(destination, agent, true);
            }
            let persisted = Some(Persisted {
                id,
                raw,
                superseded: Vec::new(),
            });
            let key = self.inner.deliver.coalescing_key(&job);
            let entry = Entry {
                job,
                persisted,
                agent,
                key,
            };
            self.enqueue(destination, entry).await;
            queued += 1;
        }
        Ok(queued)
    }

    async fn dead_letter_unreadable(
        &self,
        destination: &str,
        key: &str,
        raw: String,
    ) -> Result<(), StoreError> {
        let letter = DeadLetter {
            destination: destination.to_owned(),
            event_type: "relay".to_owned(),
            reason: "a relay persisted by an earlier version could not be read".to_owned(),
            agent_id: None,
            channel_id: None,
            payload: serde_json::from_str(&raw).unwrap_or(Value::String(raw.clone())),
            at: now_millis(),
        };
        self.inner
            .hub
            .dead_letter(self.inner.bridge, letter)
            .await?;
        let remove = Op::LRem {
            key: key.to_owned(),
            count: 1,
            value: raw,
        };
        self.inner.hub.store().one(remove).await.map(drop)
    }
}
