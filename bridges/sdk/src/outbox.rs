//! Per-destination ordered outboxes (SPEC section 6): every relay to a platform chat goes through
//! the chat's own queue and worker, so order is kept per chat, a slow or rate-limited chat never
//! delays another, and the hub loop never waits on a platform.
//!
//! A bridge implements [`Deliver`] for its job type. The worker retries a 429 after the wait the
//! platform asked for, retries transient errors (5xx, network) with capped backoff, and hands a
//! permanent error (or a transient one that lasted [`GIVE_UP_AFTER`]) to
//! [`Deliver::dead_letter`] with the reason. Nothing is dropped silently.
//!
//! [`Outboxes::durable`] also keeps every job in the store (`{prefix}bridge:outbox:{bridge}:
//! {destination}`, a list) until it is delivered or dead-lettered, saves a job's progress when an
//! attempt fails, and [`Outboxes::recover`] queues what a previous run left, so a restart (or a
//! crash) in the middle of a rate-limited backlog loses nothing. Delivery is then at least once:
//! a job delivered just before a crash, but not yet removed, is sent again. A destination whose
//! list empties leaves the index set (`{prefix}bridge:outboxes:{bridge}`) in the same round trip,
//! and recovery reads every destination's list in a few pipelined round trips.
//!
//! Each agent gets a bounded share of a destination's queue ([`AGENT_SHARE`] jobs, as
//! [`Deliver::agent`] says whose a job is): beyond it the agent's job is refused (dead-lettered
//! with the reason, so the agent is told) and counted, and other agents' jobs still fit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bridge::{DeadLetter, HubHandle};
use crate::event::now_millis;
use crate::guard::isolate;
use crate::metrics::{retry, BridgeDestination, BridgeLabels};
use crate::store::{Op, StoreError};

/// How long transient errors are retried before the job is dead-lettered.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(15 * 60);
/// Jobs waiting per destination before new ones are dead-lettered as a backlog overflow.
pub const MAX_BACKLOG: usize = 10_000;
/// Jobs one agent may have waiting per destination: a quarter of the backlog, so one agent's flood
/// of edits, typing or thread events never fills a destination for everyone else.
pub const AGENT_SHARE: usize = MAX_BACKLOG / 4;
/// Destinations read per round trip when recovering.
const RECOVER_CHUNK: usize = 256;
/// A destination's worker exits after this long without work (it is re-created on demand).
const IDLE_EXIT: Duration = Duration::from_secs(600);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How a delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The platform's rate limit: wait this long, then try again.
    RetryAfter(Duration),
    /// Worth retrying with backoff: 5xx, timeouts, connection errors.
    Transient(String),
    /// Retrying will not help (forbidden, chat not found, message too old).
    Permanent(String),
}

/// Delivers one kind of job to a platform.
pub trait Deliver<J>: Send + Sync + 'static {
    /// One attempt. `job` is mutable so that a multi-step job (the parts of a split message) can
    /// remember its progress and a retry resumes where it failed.
    fn deliver<'a>(
        &'a self,
        destination: &'a str,
        job: &'a mut J,
    ) -> BoxFuture<'a, Result<(), SendError>>;

    /// Keeps a job that will not be delivered, with the reason (and tells whoever sent it).
    fn dead_letter<'a>(&'a self, destination: &'a str, job: J, reason: String)
        -> BoxFuture<'a, ()>;

    /// The agent whose event the job relays, so each agent gets a bounded share of a
    /// destination's queue ([`AGENT_SHARE`]). `None` (the default) for jobs that are nobody's,
    /// such as notices to people, which are not limited.
    fn agent(&self, job: &J) -> Option<String> {
        let _ = job;
        None
    }
}

/// The outboxes of one bridge.
pub struct Outboxes<J> {
    inner: Arc<Inner<J>>,
}

impl<J> Clone for Outboxes<J> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<J> {
    bridge: &'static str,
    deliver: Arc<dyn Deliver<J>>,
    hub: HubHandle,
    durability: Option<Durability<J>>,
    // A std mutex: held only to look up or insert a queue, never across an await.
    queues: Mutex<HashMap<String, Queue<J>>>,
    /// Jobs waiting per (destination, agent); entries at zero are removed. A std mutex, as above.
    shares: Mutex<HashMap<(String, String), usize>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// How a durable outbox writes and reads its jobs.
struct Durability<J> {
    encode: fn(&J) -> serde_json::Result<Value>,
    decode: fn(Value) -> serde_json::Result<J>,
    /// Reads a job an earlier release stored in its own shape, so an upgrade loses no backlog.
    upgrade: fn(Value) -> Option<J>,
}

/// A queued job, with the exact list entry that keeps it in the store (durable outboxes).
struct Entry<J> {
    job: J,
    persisted: Option<Persisted>,
    /// The agent whose share of the destination this job holds.
    agent: Option<String>,
}

struct Persisted {
    id: String,
    /// The list entry as stored; removed by value when the job is done.
    raw: String,
}

struct Queue<J> {
    sender: mpsc::UnboundedSender<Entry<J>>,
    depth: Arc<AtomicUsize>,
}

impl<J: Send + 'static> Outboxes<J> {
    /// In-memory outboxes whose workers run on `tasks` and stop when `shutdown` is cancelled.
    pub fn new(
        bridge: &'static str,
        deliver: Arc<dyn Deliver<J>>,
        hub: HubHandle,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self::build(bridge, deliver, hub, None, tasks, shutdown)
    }

    fn build(
        bridge: &'static str,
        deliver: Arc<dyn Deliver<J>>,
        hub: HubHandle,
        durability: Option<Durability<J>>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                bridge,
                deliver,
                hub,
                durability,
                queues: Mutex::new(HashMap::new()),
                shares: Mutex::new(HashMap::new()),
                tasks,
                shutdown,
            }),
        }
    }

    /// Queues a job for `destination`, behind everything already queued there. A job of an agent
    /// that already has [`AGENT_SHARE`] jobs waiting there is refused: counted, and dead-lettered
    /// with the reason so the agent is told.
    pub async fn push(&self, destination: &str, job: J) {
        let agent = self.inner.deliver.agent(&job);
        if let Some(agent) = &agent {
            if !self.take_share(destination, agent, false) {
                return self.refuse_over_share(destination, agent, job).await;
            }
        }
        let persisted = self.persist(destination, &job).await;
        let entry = Entry {
            job,
            persisted,
            agent,
        };
        self.enqueue(destination, entry).await;
    }

    /// Counts a job against its agent's share of `destination`; `false` (and nothing counted)
    /// when the share is used up, unless `always` (recovered jobs were accepted before).
    fn take_share(&self, destination: &str, agent: &str, always: bool) -> bool {
        let mut shares = self.lock_shares();
        let held = shares
            .entry((destination.to_owned(), agent.to_owned()))
            .or_insert(0);
        if *held >= AGENT_SHARE && !always {
            return false;
        }
        *held += 1;
        true
    }

    fn release_share(&self, destination: &str, agent: Option<&str>) {
        let Some(agent) = agent else { return };
        let mut shares = self.lock_shares();
        let key = (destination.to_owned(), agent.to_owned());
        if let Some(held) = shares.get_mut(&key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                shares.remove(&key);
            }
        }
    }

    fn lock_shares(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), usize>> {
        self.inner
            .shares
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn refuse_over_share(&self, destination: &str, agent: &str, job: J) {
        let bridge = self.inner.bridge;
        self.inner
            .hub
            .metrics()
            .outbox_share_refusals
            .get_or_create(&BridgeLabels { bridge })
            .inc();
        tracing::warn!(
            bridge,
            destination,
            agent,
            "agent over its share of the outbox; relay refused"
        );
        let reason = format!(
            "{AGENT_SHARE} of your relays are already waiting for this destination; \
             this one was refused so that others' messages still get through"
        );
        self.inner
            .deliver
            .dead_letter(destination, job, reason)
            .await;
    }

    /// Jobs waiting (not yet delivered) for `destination`.
    pub fn depth(&self, destination: &str) -> usize {
        self.lock_queues()
            .get(destination)
            .map_or(0, |queue| queue.depth.load(Ordering::Relaxed))
    }

    fn lock_queues(&self) -> std::sync::MutexGuard<'_, HashMap<String, Queue<J>>> {
        self.inner
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn enqueue(&self, destination: &str, entry: Entry<J>) {
        let overflow = {
            let mut queues = self.lock_queues();
            let queue = queues
                .entry(destination.to_owned())
                .or_insert_with(|| self.spawn_worker(destination));
            let depth = queue.depth.load(Ordering::Relaxed);
            if depth >= MAX_BACKLOG {
                Some(entry)
            } else {
                queue.depth.fetch_add(1, Ordering::Relaxed);
                self.gauge(destination).set(depth_i64(depth + 1));
                // The worker removes its queue under this lock before it exits, so the
                // receiver is alive here.
                queue.sender.send(entry).err().map(|error| error.0)
            }
        };
        if let Some(entry) = overflow {
            let reason = format!("{MAX_BACKLOG} relays already waiting for this destination");
            tracing::warn!(bridge = self.inner.bridge, destination, %reason, "outbox full");
            self.finish(destination, entry, Some(reason)).await;
        }
    }

    fn gauge(&self, destination: &str) -> prometheus_client::metrics::gauge::Gauge {
        self.inner
            .hub
            .metrics()
            .destination_queue_depth
            .get_or_create(&BridgeDestination {
                bridge: self.inner.bridge,
                destination: destination.to_owned(),
            })
            .clone()
    }

    fn spawn_worker(&self, destination: &str) -> Queue<J> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let depth = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            outboxes: self.clone(),
            destination: destination.to_owned(),
            depth: depth.clone(),
        };
        self.inner.tasks.spawn(worker.run(receiver));
        Queue { sender, depth }
    }

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
    async fn persist(&self, destination: &str, job: &J) -> Option<Persisted> {
        let durability = self.inner.durability.as_ref()?;
        let id = uuid::Uuid::new_v4().to_string();
        let raw = match (durability.encode)(job) {
            Ok(value) => Self::entry_text(&id, value),
            Err(error) => {
                tracing::error!(bridge = self.inner.bridge, %error, "relay cannot be persisted");
                return None;
            }
        };
        let ops = vec![
            Op::RPush {
                key: self.list_key(destination),
                value: raw.clone(),
            },
            Op::SAdd {
                key: self.index_key(),
                member: destination.to_owned(),
            },
        ];
        match self.inner.hub.store().exec(ops).await {
            Ok(_) => Some(Persisted { id, raw }),
            Err(error) => {
                tracing::warn!(bridge = self.inner.bridge, destination, %error, "relay kept in memory only: the store is unavailable");
                None
            }
        }
    }

    /// Saves a job's progress after a failed attempt, so a restart resumes it where it was.
    async fn save_progress(&self, destination: &str, entry: &mut Entry<J>) {
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
        let key = self.list_key(destination);
        let ops = vec![
            Op::LRem {
                key: key.clone(),
                count: 1,
                value: persisted.raw.clone(),
            },
            // The job being worked on is the oldest: back at the head it stays first.
            Op::LPush {
                key,
                value: raw.clone(),
            },
        ];
        if self.inner.hub.store().exec(ops).await.is_ok() {
            persisted.raw = raw;
        }
    }

    /// Ends a job: delivered (`reason` None) or dead-lettered with the reason.
    async fn finish(&self, destination: &str, entry: Entry<J>, reason: Option<String>) {
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
        let list = self.list_key(destination);
        let ops = vec![
            Op::LRem {
                key: list.clone(),
                count: 1,
                value: persisted.raw,
            },
            // The last job of a destination takes it out of the index, so the index holds only
            // destinations with work and recovery stays quick however many chats were served.
            Op::ForgetIfEmpty {
                index: self.index_key(),
                member: destination.to_owned(),
                list,
            },
        ];
        if let Err(error) = self.inner.hub.store().exec(ops).await {
            // It will be sent again after a restart: at least once, never lost.
            tracing::warn!(bridge = self.inner.bridge, destination, %error, "delivered relay not removed from the store");
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
            let persisted = Some(Persisted { id, raw });
            let entry = Entry {
                job,
                persisted,
                agent,
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

fn depth_i64(depth: usize) -> i64 {
    i64::try_from(depth).unwrap_or(i64::MAX)
}

struct Worker<J> {
    outboxes: Outboxes<J>,
    destination: String,
    depth: Arc<AtomicUsize>,
}

impl<J: Send + 'static> Worker<J> {
    async fn run(self, mut receiver: mpsc::UnboundedReceiver<Entry<J>>) {
        let inner = &self.outboxes.inner;
        loop {
            let entry = tokio::select! {
                entry = receiver.recv() => entry,
                _ = inner.shutdown.cancelled() => None,
                _ = tokio::time::sleep(IDLE_EXIT) => {
                    let mut queues = inner.queues.lock().unwrap_or_else(PoisonError::into_inner);
                    if receiver.is_empty() {
                        queues.remove(&self.destination);
                        return;
                    }
                    continue;
                }
            };
            let Some(entry) = entry else { break };
            self.deliver(entry).await;
            let left = self.depth.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
            self.outboxes.gauge(&self.destination).set(depth_i64(left));
        }
        let undelivered = receiver.len();
        if undelivered > 0 {
            let kept = if inner.durability.is_some() {
                "kept in the store for the next run"
            } else {
                "lost: this outbox is not durable"
            };
            tracing::warn!(
                bridge = inner.bridge,
                destination = %self.destination,
                undelivered,
                "stopping with relays still queued: {kept}"
            );
        }
    }

    /// Delivers one job, retrying until it is delivered, dead-lettered, or the bridge stops.
    async fn deliver(&self, mut entry: Entry<J>) {
        let outboxes = &self.outboxes;
        let inner = &outboxes.inner;
        let destination = self.destination.as_str();
        let metrics_label = BridgeLabels {
            bridge: inner.bridge,
        };
        let started = Instant::now();
        let mut backoff = Duration::from_millis(250);
        loop {
            // One job's panic must not take the destination's worker with it: it fails that job
            // (dead letter, the agent is told) and the next job is handled.
            let attempt = isolate(inner.deliver.deliver(destination, &mut entry.job))
                .await
                .unwrap_or_else(|panic| {
                    inner
                        .hub
                        .metrics()
                        .count_ignored(inner.bridge, "job_panicked");
                    tracing::error!(
                        bridge = inner.bridge,
                        destination,
                        panic,
                        "a relay job panicked"
                    );
                    Err(SendError::Permanent(format!("internal error: {panic}")))
                });
            let wait = match attempt {
                Ok(()) => return outboxes.finish(destination, entry, None).await,
                Err(SendError::Permanent(reason)) => {
                    tracing::warn!(bridge = inner.bridge, destination, %reason, "relay dead-lettered");
                    return outboxes.finish(destination, entry, Some(reason)).await;
                }
                Err(SendError::RetryAfter(wait)) => {
                    inner
                        .hub
                        .metrics()
                        .platform_429s
                        .get_or_create(&metrics_label)
                        .inc();
                    tracing::info!(
                        bridge = inner.bridge,
                        destination,
                        ?wait,
                        "platform rate limit; waiting"
                    );
                    wait
                }
                Err(SendError::Transient(reason)) => {
                    inner
                        .hub
                        .metrics()
                        .count_retry(inner.bridge, retry::DELIVERY_FAILED);
                    if started.elapsed() >= GIVE_UP_AFTER {
                        let reason = format!("gave up after {:?}: {reason}", started.elapsed());
                        return outboxes.finish(destination, entry, Some(reason)).await;
                    }
                    tracing::warn!(bridge = inner.bridge, destination, %reason, retry_in = ?backoff, "relay failed; retrying");
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
            };
            outboxes.save_progress(destination, &mut entry).await;
            tokio::select! {
                // A durable job stays in the store and resumes on the next run.
                _ = inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
