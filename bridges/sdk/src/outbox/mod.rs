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
//! Under the supervisor the outboxes are fenced (SPEC section 6; [`crate::fence`]): a worker
//! checks the run's fence right before every delivery attempt, and finishing a job or saving its
//! progress is refused once the fence is stale, in the same atomic step. A run that lost its
//! bridge's lease thus sends nothing more and leaves the store to the new holder; its workers
//! stop. Without a fence (no lease: tests, embedders) nothing is checked.
//!
//! Each agent gets a bounded share of a destination's queue ([`AGENT_SHARE`] jobs, as
//! [`Deliver::agent`] says whose a job is): beyond it the agent's job is refused (dead-lettered
//! with the reason, so the agent is told) and counted, and other agents' jobs still fit.
//!
//! A queue is not a plain FIFO, for streamed answers (SPEC section 5): a new job first meets the
//! newest waiting job about the same message ([`Deliver::coalescing_key`], [`Deliver::absorb`]),
//! which may take it in (a newer text) or be cancelled by it (a delete), in the store too; and the
//! worker takes the first job that may start now ([`Deliver::not_before`]: an edit waiting for its
//! cadence does not hold up other messages), deferrable ones ([`Deliver::deferrable`]) only when
//! nothing else is ready.
//!
//! This module owns the queues and the shares; [`durable`] is the store side, `queue` the order
//! in which a destination's jobs start, [`worker`] the delivery loop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bridge::HubHandle;
use crate::fence::Fence;
use crate::metrics::{BridgeDestination, BridgeLabels};
use crate::store::{Op, Reply};

mod durable;
mod queue;
mod worker;

use self::queue::Queue;
use self::worker::Worker;

/// How long transient errors are retried before the job is dead-lettered.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(15 * 60);
/// Jobs waiting per destination before new ones are dead-lettered as a backlog overflow.
pub const MAX_BACKLOG: usize = 10_000;
/// Jobs one agent may have waiting per destination: a quarter of the backlog, so one agent's flood
/// of edits, typing or thread events never fills a destination for everyone else.
pub const AGENT_SHARE: usize = MAX_BACKLOG / 4;

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

    /// Whether `job` may wait for more urgent ones queued behind it (a streamed answer's
    /// intermediate edit, behind new messages and final edits). `false` (the default): taken in
    /// order.
    fn deferrable(&self, job: &J) -> bool {
        let _ = job;
        false
    }

    /// Which jobs may meet in [`Self::absorb`]: those with the same key (the same hub message in
    /// the same link). `None` (the default): the job meets no other.
    fn coalescing_key(&self, job: &J) -> Option<String> {
        let _ = job;
        None
    }

    /// What `newer`, just pushed, does to `waiting`, the newest job with the same key that has not
    /// started yet. Called under the queue's lock: no awaiting, no I/O.
    fn absorb(&self, waiting: &mut J, newer: &J) -> Absorb {
        let _ = (waiting, newer);
        Absorb::Neither
    }

    /// The earliest time `job` may start (an edit waits for its message's cadence); `None` (the
    /// default): now. Called under the queue's lock, as [`Self::absorb`].
    fn not_before(&self, destination: &str, job: &J) -> Option<Instant> {
        let _ = (destination, job);
        None
    }
}

/// What a new job does to one still waiting for the same destination (SPEC section 5: a streamed
/// answer's edits must not become one platform call each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absorb {
    /// Unrelated: the new job queues behind.
    Neither,
    /// The waiting job now does the new one's work too (a newer text taken into a queued send or
    /// edit); the new job is not queued.
    IntoWaiting,
    /// The new job makes the waiting one moot (a delete of a message whose edit waits): the
    /// waiting job goes, the new one queues.
    ReplacesWaiting,
    /// Each makes the other moot (a delete of a message whose send has not started): neither
    /// runs.
    Cancels,
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
    // A std mutex: held only to queue, take or look at jobs, never across an await.
    queues: Mutex<HashMap<String, Queue<J>>>,
    /// Jobs waiting per (destination, agent); entries at zero are removed. A std mutex, as above.
    shares: Mutex<HashMap<(String, String), usize>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// Set once a worker found the run's fence stale, so that is logged once.
    fenced_out: AtomicBool,
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
    /// Its [`Deliver::coalescing_key`].
    key: Option<String>,
}

struct Persisted {
    id: String,
    /// The list entry as stored; removed by value when the job is done.
    raw: String,
    /// Entries this job was stored as before it took in newer jobs. The store may still hold
    /// one of them for a moment (the replacement is written after the queue's lock is let go),
    /// so whoever removes the job removes these too.
    superseded: Vec<String>,
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
                fenced_out: AtomicBool::new(false),
            }),
        }
    }

    /// Queues a job for `destination`, behind everything already queued there. A job of an agent
    /// that already has [`AGENT_SHARE`] jobs waiting there is refused: counted, and dead-lettered
    /// with the reason so the agent is told.
    ///
    /// First the job meets the newest waiting job with its coalescing key ([`Deliver::absorb`]):
    /// taken into it, it costs nothing more; cancelling it, both may go.
    pub async fn push(&self, destination: &str, job: J) {
        let key = self.inner.deliver.coalescing_key(&job);
        let Some(job) = self.absorb(destination, key.as_deref(), job).await else {
            return;
        };
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
            key,
        };
        self.enqueue(destination, entry).await;
    }

    /// Lets `job` meet the newest waiting job with its key; returns it when it is still to be
    /// queued.
    async fn absorb(&self, destination: &str, key: Option<&str>, job: J) -> Option<J> {
        let Some(key) = key else {
            return Some(job);
        };
        let (outcome, removed, rewritten) = {
            let mut queues = self.lock_queues();
            let Some(queue) = queues.get_mut(destination) else {
                return Some(job);
            };
            let Some(index) = queue.newest_with_key(key) else {
                return Some(job);
            };
            let Some(waiting) = queue.get_mut(index) else {
                return Some(job);
            };
            let outcome = self.inner.deliver.absorb(&mut waiting.job, &job);
            let mut removed = None;
            let mut rewritten = None;
            match outcome {
                Absorb::Neither => {}
                Absorb::IntoWaiting => rewritten = self.restate(waiting),
                Absorb::ReplacesWaiting | Absorb::Cancels => {
                    removed = queue.remove(index);
                    self.gauge(destination).set(depth_i64(queue.depth()));
                }
            }
            (outcome, removed, rewritten)
        };
        if outcome == Absorb::Neither {
            return Some(job);
        }
        self.inner
            .hub
            .metrics()
            .outbox_coalesced
            .get_or_create(&BridgeLabels {
                bridge: self.inner.bridge,
            })
            .inc();
        if let Some((old, new)) = rewritten {
            self.replace_stored(destination, old, new).await;
        }
        if let Some(entry) = removed {
            self.finish(destination, entry, None).await;
        }
        (outcome == Absorb::ReplacesWaiting).then_some(job)
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
        self.lock_queues().get(destination).map_or(0, Queue::depth)
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
            let depth = queue.depth();
            if depth >= MAX_BACKLOG {
                Some(entry)
            } else {
                queue.push(entry);
                self.gauge(destination).set(depth_i64(depth + 1));
                // The worker removes its queue under this lock before it exits, so it is alive
                // to take this job.
                queue.wake.notify_one();
                None
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
        let queue = Queue::new();
        let worker = Worker {
            outboxes: self.clone(),
            destination: destination.to_owned(),
            wake: queue.wake.clone(),
        };
        self.inner.tasks.spawn(worker.run());
        queue
    }
}

impl<J> Outboxes<J> {
    /// Whether the run these outboxes work for still holds its bridge's lease: always without a
    /// fence; `false` when the store cannot say.
    pub async fn fence_holds(&self) -> bool {
        let Some(fence) = self.inner.hub.fence() else {
            return true;
        };
        let check = Op::CheckFence {
            fence: fence.clone(),
        };
        matches!(self.inner.hub.store().one(check).await, Ok(Reply::Int(1)))
    }

    /// Notes that the store refused the run's fence: the run lost its bridge's lease.
    fn fenced_out(&self) {
        if self.inner.fenced_out.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::warn!(
            bridge = self.inner.bridge,
            fence = self.inner.hub.fence().map(Fence::token),
            "this run no longer holds the bridge's lease: its outboxes send nothing more and \
             leave their jobs in the store for the new holder"
        );
    }
}

fn depth_i64(depth: usize) -> i64 {
    i64::try_from(depth).unwrap_or(i64::MAX)
}
